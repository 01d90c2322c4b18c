#!/bin/bash
# Runs inside a throw-away container of the host package image (Debian bookworm).
# Assembles the root of a registry:2 stand-in from Debian's docker-registry
# (Distribution 2.8.2) and busybox, and writes it as a tar to stdout.
# The recipe folder is mounted at /recipe.
set -euo pipefail
exec 3>&1 1>&2   # keep stdout for the tar only

work=$(mktemp -d)
cd "$work"
# Debian's dynamic busybox, not busybox-static: the static one's wget/nslookup crash
# (static glibc and NSS); the official image's busybox wget works.
apt-get download docker-registry busybox
mkdir pkg root
for deb in ./*.deb; do dpkg-deb -x "$deb" pkg; done

install -d root/bin root/usr/bin root/etc/docker/registry root/var/lib/registry \
  root/lib/x86_64-linux-gnu root/lib64 root/tmp root/etc/ssl/certs
chmod 1777 root/tmp
install -m 0755 pkg/usr/bin/docker-registry root/bin/registry
install -m 0755 pkg/bin/busybox root/bin/busybox
# busybox applets (sh, cat, wget, ...) as links, like an Alpine base.
for applet in $(root/bin/busybox --list); do
  [ -e "root/bin/$applet" ] || ln -s busybox "root/bin/$applet"
done
# Both binaries are dynamically linked against glibc (busybox also libresolv); copy what ldd names.
ldd pkg/usr/bin/docker-registry pkg/bin/busybox | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u |
  while read -r lib; do cp -L "$lib" "root$lib"; done
cp -L /etc/ssl/certs/ca-certificates.crt root/etc/ssl/certs/ca-certificates.crt
install -m 0644 /recipe/config.yml root/etc/docker/registry/config.yml
install -m 0755 /recipe/entrypoint.sh root/entrypoint.sh
printf 'root:x:0:0:root:/root:/bin/sh\n' >root/etc/passwd
printf 'root:x:0:\n' >root/etc/group
printf 'hosts: files dns\n' >root/etc/nsswitch.conf

root/bin/registry --version
tar -C root --numeric-owner --owner=0 --group=0 -c . >&3
