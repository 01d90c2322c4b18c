sh -c 'set -eu
if [ -e /run/registry/k3s-restart-pending ]; then
  systemctl try-restart k3s.service
  rm -f /run/registry/k3s-restart-pending
  echo '"'"'k3s restarted if it was running'"'"'
else echo '"'"'registries.yaml unchanged: k3s not restarted'"'"'; fi
'