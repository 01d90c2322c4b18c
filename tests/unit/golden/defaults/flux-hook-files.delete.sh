sudo -n sh -c 'set -eu
rm -rf /etc/caddy/flux-hook
'