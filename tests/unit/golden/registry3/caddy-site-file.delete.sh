sudo -n sh -c 'set -eu
if [ -e /etc/systemd/system/registry-credential-expiry.timer ] || [ -e /var/lib/registry-credential-expiry ]; then
  systemctl disable --now registry-credential-expiry.timer registry-credential-expiry.service >/dev/null 2>&1 || true
  rm -f /etc/systemd/system/registry-credential-expiry.timer /etc/systemd/system/registry-credential-expiry.service
  rm -rf /var/lib/registry-credential-expiry
  systemctl daemon-reload
  echo '"'"'grace period: expiry timer removed'"'"'
fi
site=/etc/caddy/registry.caddy; main=/etc/caddy/Caddyfile
if [ -f "$main" ]; then grep -vxF '"'"'import /etc/caddy/registry.caddy'"'"' "$main" > "$main.tmp" || true; cat "$main.tmp" > "$main"; rm -f "$main.tmp"; fi
rm -f "$site"
if systemctl is-active --quiet caddy; then systemctl reload caddy; fi
if [ -d /var/lib/registry-upstreams ]; then
  gone=$(mktemp -d /var/lib/registry-upstreams.gone.XXXXXX)
  mv /var/lib/registry-upstreams "$gone/"
  rm -rf "$gone"
fi
'