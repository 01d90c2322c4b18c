#!/bin/bash
# Runs inside a throw-away container of the host package image (Debian bookworm).
# Assembles the root of a registry:3 stand-in: the static `registry` binary built on
# this machine from github.com/distribution/distribution/v3 (go.mod here pins it;
# testhost.py builds it, nothing of its source is kept here), the image's config
# (cmd/registry/config-dev.yml of the same module, as the official Dockerfile copies it)
# and busybox for a shell, like the official Alpine-based image. Writes a tar to stdout.
# /recipe is this folder, /build holds `registry` and `config.yml`.
set -euo pipefail
exec 3>&1 1>&2   # keep stdout for the tar only

work=$(mktemp -d)
cd "$work"
apt-get download busybox
mkdir pkg root
dpkg-deb -x ./busybox_*.deb pkg

install -d root/bin root/usr/bin root/etc/distribution root/var/lib/registry \
  root/lib/x86_64-linux-gnu root/lib64 root/tmp root/etc/ssl/certs
chmod 1777 root/tmp
install -m 0755 /build/registry root/bin/registry
install -m 0755 pkg/bin/busybox root/bin/busybox
for applet in $(root/bin/busybox --list); do
  [ -e "root/bin/$applet" ] || ln -s busybox "root/bin/$applet"
done
ldd pkg/bin/busybox | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u |
  while read -r lib; do cp -L "$lib" "root$lib"; done
cp -L /etc/ssl/certs/ca-certificates.crt root/etc/ssl/certs/ca-certificates.crt
install -m 0644 /build/config.yml root/etc/distribution/config.yml
printf 'root:x:0:0:root:/root:/bin/sh\n' >root/etc/passwd
printf 'root:x:0:\n' >root/etc/group
printf 'hosts: files dns\n' >root/etc/nsswitch.conf

root/bin/registry --version
tar -C root --numeric-owner --owner=0 --group=0 -c . >&3
