sh -c 'set -eu
problems='"'"''"'"'
fail() { problems="${problems}$1
"; }
command -v python3 >/dev/null 2>&1 || fail '"'"'preflight: node server-2: python3 is not installed (needed to merge registries.yaml)'"'"'
systemctl cat k3s.service >/dev/null 2>&1 || fail '"'"'preflight: node server-2: k3s is not installed: systemd unit k3s.service not found (set the node service to k3s or k3s-agent)'"'"'
command -v k3s >/dev/null 2>&1 || fail '"'"'preflight: node server-2: the k3s binary is not on the PATH (needed for k3s crictl pull)'"'"'
if [ -n "$problems" ]; then printf '"'"'%s'"'"' "$problems" >&2; exit 1; fi
[ ! -f /etc/rancher/k3s/registries-2.yaml ] || echo "preflight: node server-2: takes over /etc/rancher/k3s/registries-2.yaml (mode $(stat -c '"'"'%a'"'"' /etc/rancher/k3s/registries-2.yaml)): the entry for registry.example.com under configs is replaced, every other entry and key stays; the file becomes root:root 0600"
echo '"'"'preflight: node server-2: ok'"'"'
'