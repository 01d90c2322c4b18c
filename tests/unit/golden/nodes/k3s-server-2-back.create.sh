sh -c 'set -eu
NODE=server-2
SERVICE=k3s
REF=registry.example.com/ops/verify-probe:v1
DEADLINE=180
ACCEPT_MISSING=yes
<host/steps/k3s-trust/node-pull.sh sha256=f8fceede90fb203b3e23f0da38de9f3cbaa2af99ed6f1f1ddaa5994d3d8e5c51 quoted>'