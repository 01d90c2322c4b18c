sudo -n sh -c 'set -eu
umask 077
install -d -m 0700 /etc/registry
cat > /etc/registry/registry.env.new
mv /etc/registry/registry.env.new /etc/registry/registry.env
exec 9>/run/lock/registry-maintenance.lock
flock -w 900 9 || { echo '"'"'a registry maintenance window (GC, backup or restore) still runs after 15 minutes; retry later'"'"' >&2; exit 1; }
[ -f /etc/ssl/s3-ca.pem ] || { echo '"'"'s3CaFile /etc/ssl/s3-ca.pem does not exist on the server'"'"' >&2; exit 1; }
install -d -m 0755 /var/lib/registry-upstreams
slots() {
  live='"'"''"'"'
  for port in "$@"; do
    if curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/"; then live="$live $port"; fi
  done
  [ -n "$live" ] || return 0
  i=1
  while [ "$i" -le 8 ]; do
    for port in $live; do
      [ "$i" -le 8 ] || break
      { printf '"'"'127.0.0.1:%s\n'"'"' "$port" > "/var/lib/registry-upstreams/$i.new" && chmod 0644 "/var/lib/registry-upstreams/$i.new" && mv "/var/lib/registry-upstreams/$i.new" "/var/lib/registry-upstreams/$i"; } 2>/dev/null || return 0
      i=$((i + 1))
    done
  done
}
if [ "$(docker inspect -f '"'"'{{.State.Running}}'"'"' registry 2>/dev/null)" = true ]; then slots 5001; sleep 1; fi
docker stop -t 25 registry >/dev/null 2>&1 || true
docker rm -f registry >/dev/null 2>&1 || true
docker run -d --name registry --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host -v /srv/data/registry:/var/lib/registry -v /etc/ssl/s3-ca.pem:/etc/ssl/registry-s3-ca.pem:ro --env-file /etc/registry/registry.env -e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= -e REGISTRY_HTTP_DRAINTIMEOUT=20s registry:3 >/dev/null
i=0
until curl -fsS -o /dev/null http://127.0.0.1:5000/v2/; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo '"'"'registry registry did not answer on 127.0.0.1:5000/v2/ within 30 s'"'"' >&2; docker logs --tail 20 registry >&2; exit 1; fi
  sleep 0.5
done
slots 5000 5001
echo '"'"'registry: 127.0.0.1:5000'"'"'
if [ "$(docker inspect -f '"'"'{{.State.Running}}'"'"' registry-2 2>/dev/null)" = true ]; then slots 5000; sleep 1; fi
docker stop -t 25 registry-2 >/dev/null 2>&1 || true
docker rm -f registry-2 >/dev/null 2>&1 || true
docker run -d --name registry-2 --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host -v /srv/data/registry:/var/lib/registry -v /etc/ssl/s3-ca.pem:/etc/ssl/registry-s3-ca.pem:ro --env-file /etc/registry/registry.env -e REGISTRY_HTTP_ADDR=127.0.0.1:5001 -e REGISTRY_HTTP_DEBUG_ADDR= -e REGISTRY_HTTP_DRAINTIMEOUT=20s registry:3 >/dev/null
i=0
until curl -fsS -o /dev/null http://127.0.0.1:5001/v2/; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo '"'"'registry registry-2 did not answer on 127.0.0.1:5001/v2/ within 30 s'"'"' >&2; docker logs --tail 20 registry-2 >&2; exit 1; fi
  sleep 0.5
done
slots 5000 5001
echo '"'"'registry-2: 127.0.0.1:5001'"'"'
if docker inspect registry-3 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-3 >/dev/null 2>&1 || true; docker rm -f registry-3 >/dev/null; echo '"'"'registry-3: removed (fewer replicas)'"'"'; fi
if docker inspect registry-4 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-4 >/dev/null 2>&1 || true; docker rm -f registry-4 >/dev/null; echo '"'"'registry-4: removed (fewer replicas)'"'"'; fi
if docker inspect registry-5 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-5 >/dev/null 2>&1 || true; docker rm -f registry-5 >/dev/null; echo '"'"'registry-5: removed (fewer replicas)'"'"'; fi
if docker inspect registry-6 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-6 >/dev/null 2>&1 || true; docker rm -f registry-6 >/dev/null; echo '"'"'registry-6: removed (fewer replicas)'"'"'; fi
if docker inspect registry-7 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-7 >/dev/null 2>&1 || true; docker rm -f registry-7 >/dev/null; echo '"'"'registry-7: removed (fewer replicas)'"'"'; fi
if docker inspect registry-8 >/dev/null 2>&1; then sleep 1; docker stop -t 25 registry-8 >/dev/null 2>&1 || true; docker rm -f registry-8 >/dev/null; echo '"'"'registry-8: removed (fewer replicas)'"'"'; fi
'