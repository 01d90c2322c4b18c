sudo -n sh -c 'set -eu
umask 077
install -d -m 0700 /etc/registry
cat > /etc/registry/registry.env.new
mv /etc/registry/registry.env.new /etc/registry/registry.env
exec 9>/run/lock/registry-maintenance.lock
flock -w 900 9 || { echo '"'"'a registry maintenance window (GC, backup or restore) still runs after 15 minutes; retry later'"'"' >&2; exit 1; }
docker stop -t 25 registry >/dev/null 2>&1 || true
docker rm -f registry >/dev/null 2>&1 || true
docker run -d --name registry --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host -v /srv/data/registry:/var/lib/registry --env-file /etc/registry/registry.env -e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= -e REGISTRY_HTTP_DRAINTIMEOUT=20s registry:2.8.3 >/dev/null
i=0
until curl -fsS -o /dev/null http://127.0.0.1:5000/v2/; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then echo '"'"'registry did not answer on 127.0.0.1:5000/v2/ within 30 s'"'"' >&2; docker logs --tail 20 registry >&2; exit 1; fi
  sleep 0.5
done
echo 127.0.0.1:5000
'