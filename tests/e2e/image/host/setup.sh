#!/bin/bash
# Stage 3 of the test host: runs as root inside the booted stage-2 container
# after the rootfs/ overlay and /usr/bin/caddy have been copied in.
set -euo pipefail

# --- permissions of the copied overlay (docker cp keeps modes from git only) ---
chmod 0755 /usr/bin/caddy /usr/local/bin/k3s /usr/local/bin/pebble-root /usr/local/sbin/regtest-seed-images \
  /usr/local/sbin/regtest-egress-guard
chmod 0440 /etc/sudoers.d/90-cloud-init-users
chmod 0644 /etc/caddy/Caddyfile /usr/share/caddy/index.html \
  /etc/systemd/system/caddy.service /etc/systemd/system/pebble.service \
  /etc/systemd/system/k3s.service /etc/systemd/system/k3s-agent.service \
  /etc/systemd/system/regtest-seed-images.service \
  /etc/systemd/system/regtest-egress-guard.service \
  /etc/systemd/system/ssh.service.d/*.conf \
  /etc/pebble/pebble-config.json

# --- the `ubuntu` login user: key only (no password), passwordless sudo ---
if ! id ubuntu >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash --groups adm,sudo ubuntu
fi
usermod -p '*' ubuntu          # no password; '*' (not '!') so key login is allowed
visudo -cf /etc/sudoers.d/90-cloud-init-users

# --- Caddy, the way its Debian package installs it (preinstall + postinstall) ---
getent group caddy >/dev/null || groupadd --system caddy
if ! id caddy >/dev/null 2>&1; then
  useradd --system --gid caddy --create-home --home-dir /var/lib/caddy \
    --shell /usr/sbin/nologin --comment "Caddy web server" caddy
fi
getent group www-data >/dev/null && usermod -aG www-data caddy
caddy version

# --- Pebble's own listener certificate (CA + cert for 127.0.0.1/localhost) ---
cd /etc/pebble
if [ ! -s listener-ca.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -subj "/CN=regtest pebble listener CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout listener-ca.key -out listener-ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
    -keyout listener-key.pem -out listener.csr 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost" >listener.ext
  openssl x509 -req -in listener.csr -CA listener-ca.pem -CAkey listener-ca.key \
    -CAcreateserial -days 3650 -sha256 -extfile listener.ext -out listener-cert.pem 2>/dev/null
  rm -f listener.csr listener.ext listener-ca.srl
fi
chmod 0644 listener-ca.pem listener-cert.pem
chmod 0600 listener-ca.key listener-key.pem
install -d -m 0755 /var/lib/pebble

# --- k3s stand-in ---
install -d -m 0755 /etc/rancher/k3s /var/lib/k3s-standin \
  /var/lib/rancher/k3s/agent/etc/containerd/certs.d
/usr/local/bin/k3s --version

# --- sshd: stock config; host keys are made per container at first boot ---
rm -f /etc/ssh/ssh_host_*

systemctl daemon-reload
systemctl enable caddy.service pebble.service k3s.service regtest-seed-images.service \
  regtest-egress-guard.service
systemctl start pebble.service caddy.service k3s.service
systemctl is-active caddy.service pebble.service k3s.service
