sudo -n sh -c 'set -eu
umask 077
work=$(mktemp -d)
trap '"'"'rm -rf "$work"'"'"' EXIT
awk -v sep='"'"'# --- the settled site (what the handover step installs when it is no rotation) ---'"'"' '"'"'$0 == sep { found = 1; next } !found { print }'"'"' > "$work/in"
cat > "$work/step" <<'"'"'REGISTRY_SITE_STEP'"'"'
set -eu
site=/etc/caddy/registry.caddy; main=/etc/caddy/Caddyfile
[ -f "$main" ] || { echo "Caddyfile $main not found" >&2; exit 1; }
umask 027
tmp=$(mktemp "$site.new.XXXXXX"); main_new=$(mktemp "$main.new.XXXXXX")
trap '"'"'rm -f "$tmp" "$main_new"'"'"' EXIT
cat > "$tmp"
chgrp caddy "$tmp" 2>/dev/null || true
chmod 0640 "$tmp"
backup="$main.$(date -u +%Y%m%d-%H%M%S).bak"
python3 - "$main" registry.example.com '"'"'import /etc/caddy/registry.caddy'"'"' "$backup" "$main_new" <<'"'"'END_OF_CADDY_TAKEOVER'"'"'
<host/steps/caddy-site/caddy_takeover.py sha256=8586c83d43ab91866667f7ea0ec88e92a582e300affaf17ab0e22b55fd5800b6 quoted>END_OF_CADDY_TAKEOVER
install -d -m 0755 /var/lib/registry-upstreams
i=1; while [ "$i" -le 8 ]; do
  if [ ! -s "/var/lib/registry-upstreams/$i" ]; then
    printf '"'"'%s\n'"'"' 127.0.0.1:5000 > "/var/lib/registry-upstreams/$i.new"; chmod 0644 "/var/lib/registry-upstreams/$i.new"; mv "/var/lib/registry-upstreams/$i.new" "/var/lib/registry-upstreams/$i"
  fi
  i=$((i + 1))
done
if cmp -s "$main_new" "$main" && [ -f "$site" ] && cmp -s "$tmp" "$site"; then echo "site unchanged"; exit 0; fi
if [ -f "$site" ]; then cp -p "$site" "$site.bak"; fi
mv "$tmp" "$site"
main_changed=0
if ! cmp -s "$main_new" "$main"; then
  main_changed=1; cp "$main" "$backup"; chmod 0600 "$backup"; cat "$main_new" > "$main"
fi
if ! out=$(caddy validate --adapter caddyfile --config "$main" 2>&1); then
  if [ -f "$site.bak" ]; then mv "$site.bak" "$site"; else rm -f "$site"; fi
  if [ "$main_changed" = 1 ]; then cat "$backup" > "$main"; rm -f "$backup"; fi
  echo '"'"'caddy validate rejected the new site; the previous configuration is still live:'"'"' >&2
  printf '"'"'%s\n'"'"' "$out" | grep -v '"'"'"level":"info"'"'"' >&2
  exit 1
fi
rm -f "$site.bak"
if systemctl is-active --quiet caddy; then systemctl reload caddy; else systemctl enable --now caddy; fi
echo '"'"'site installed and Caddy reloaded'"'"'
if [ "$main_changed" = 1 ]; then echo "the previous $main is kept as $backup"; fi
REGISTRY_SITE_STEP
sh "$work/step" < "$work/in"
'