#!/bin/bash
# Stage 2 of the test host: runs as root inside the booted stage-1 container
# (systemd is PID 1), installs the packages that debootstrap cannot configure.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -q
# docker.io brings containerd and ctr (what the k3s stand-in pulls with);
# skopeo for registry clients; pebble for real ACME on loopback.
apt-get install -y -q --no-install-recommends \
  docker.io skopeo pebble \
  openssl python3 python3-yaml jq less procps iptables xz-utils gnupg
apt-get clean

systemctl is-active --quiet docker || { systemctl status docker --no-pager; exit 1; }
docker info --format '{{.Driver}}'

# The outer overlayfs cannot rename directories that come from a lower image
# layer (EXDEV), and dockerd renames some at start. So no engine data goes into
# this image: stage 3 starts from empty /var/lib/{docker,containerd}, and test
# hosts run with anonymous volumes there (Docker copies the image content in).
systemctl stop docker.socket docker containerd
rm -rf /var/lib/docker /var/lib/containerd
