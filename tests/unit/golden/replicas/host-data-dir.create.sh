sudo -n sh -c 'set -eu
if [ -d /srv/data/registry ]; then echo "data directory /srv/data/registry kept as it is ($(stat -c '"'"'%U:%G %a'"'"' /srv/data/registry))"
else install -d -m 0750 -o root -g root /srv/data/registry; fi
echo /srv/data/registry
'