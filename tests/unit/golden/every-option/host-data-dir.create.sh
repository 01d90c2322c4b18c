sh -c 'set -eu
if [ -d /srv/data/registry@2 ]; then echo "data directory /srv/data/registry@2 kept as it is ($(stat -c '"'"'%U:%G %a'"'"' /srv/data/registry@2))"
else install -d -m 0750 -o root -g root /srv/data/registry@2; fi
echo /srv/data/registry@2
'