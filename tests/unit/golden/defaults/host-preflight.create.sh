sudo -n sh -c 'set -eu
CONTAINER=registry
DATA_DIR=/srv/data/registry
DOMAIN=registry.example.com
CADDYFILE=/etc/caddy/Caddyfile
SITE_RE='"'"'^[[:space:]]*([^#]*[[:space:],])?(https://)?registry\.example\.com(:443)?[[:space:]]*(,|\{)'"'"'
MIN_MAJOR=2
MIN_MINOR=8
MANAGED_LABEL=io.registry-program.managed-by
REGISTRIES_FILE=/etc/rancher/k3s/registries.yaml
K3S_SERVICE=k3s
REPLICAS=registry:5000
BACKUP_DIR=/srv/backups/registry
# shellcheck disable=SC2016 # a Go template for docker inspect, not shell expansions
PUBLISHED='"'"'{{.Name}}|{{.HostConfig.PublishAllPorts}}|{{range $port, $bindings := .HostConfig.PortBindings}}{{range $bindings}}{{if .HostIp}}{{.HostIp}}{{else}}0.0.0.0{{end}}:{{if .HostPort}}{{.HostPort}}{{else}}(any){{end}}->{{$port}} {{end}}{{end}}'"'"'
<host/steps/host/preflight.sh sha256=85184f2acab8ded756a64eeed3dae51b07b567a6c937711f252ac300727eb670 quoted>'