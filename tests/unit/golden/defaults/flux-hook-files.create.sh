sudo -n sh -c 'set -eu
umask 027
d=/etc/caddy/flux-hook
install -d -m 0750 -o root -g caddy "$d"
IFS= read -r path; IFS= read -r upstream
tmp=$(mktemp "$d/.new.XXXXXX"); trap '"'"'rm -f "$tmp"'"'"' EXIT
printf '"'"'%s\n'"'"' "$path" > "$tmp"; chown root:caddy "$tmp"; chmod 0640 "$tmp"; mv "$tmp" "$d/path"
tmp=$(mktemp "$d/.new.XXXXXX")
printf '"'"'%s\n'"'"' "$upstream" > "$tmp"; chown root:caddy "$tmp"; chmod 0640 "$tmp"; mv "$tmp" "$d/upstream"
echo '"'"'flux hook: relay files written'"'"'
'