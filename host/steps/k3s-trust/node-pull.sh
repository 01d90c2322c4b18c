# Pull the probe image through this node's k3s (its containerd, the credential in its registries.yaml).
# Set by the header: NODE, SERVICE, REF, DEADLINE, and ACCEPT_MISSING (yes: a "not found" from the registry is
# enough, it answered only because it accepted the node's credential; the deploy check pushes the probe later).
end=$(($(date +%s) + DEADLINE))
while :; do
  if ! state=$(systemctl is-active "$SERVICE.service" 2>&1); then
    out="$SERVICE.service is $state"
  elif out=$(k3s crictl pull "$REF" 2>&1); then
    echo "node $NODE: $SERVICE is up and pulled $REF through its containerd: $(printf '%s\n' "$out" | tail -n 1)"
    exit 0
  elif [ "$ACCEPT_MISSING" = yes ]; then
    case "$out" in *'failed to resolve reference'*'not found'*)
      echo "node $NODE: $SERVICE is up and the registry accepted its credential ($REF is not pushed yet)"
      exit 0 ;;
    esac
  fi
  if [ "$(date +%s)" -ge "$end" ]; then
    printf 'node %s: FAILED: %s could not pull %s through its containerd within %ss (k3s crictl pull):\n%s\n' \
      "$NODE" "$SERVICE" "$REF" "$DEADLINE" "$(printf '%s\n' "$out" | tail -n 5)" >&2
    exit 1
  fi
  sleep 2
done
