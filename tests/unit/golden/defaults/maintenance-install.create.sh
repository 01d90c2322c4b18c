sudo -n sh -c 'set -eu
check_calendar() {  # check_calendar SETTING EXPRESSION: nothing is changed on a bad schedule
  if ! out=$(systemd-analyze calendar "$2" 2>&1); then
    printf '"'"'%s = %s is not a valid systemd OnCalendar expression:\n%s\n'"'"' "$1" "$2" "$out" >&2
    exit 1
  fi
}
check_calendar gcSchedule '"'"'Sun *-*-* 03:00:00'"'"'
check_calendar backupSchedule '"'"'*-*-* 02:30:00'"'"'
umask 022
tmp=$(mktemp -d)
trap '"'"'rm -rf "$tmp"'"'"' EXIT
cat > "$tmp/0" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
#!/bin/sh
# Managed by the registry Pulumi program; edits are overwritten.
# A maintenance window runs the registry read-only (Distribution'"'"'s storage.maintenance.readonly),
# so garbage collection and backups see a store no push can change underneath them.
set -eu

NAME=registry
PORT=5000
REPLICAS=registry:5000
SETTLE=1
DATA_DIR=/srv/data/registry
BACKUP_DIR=/srv/backups/registry
KEEP=7
MIN_FREE_PERCENT=10
BACKUP_S3='"'"''"'"'
STATE_DIR=/var/lib/registry-maintenance
FLAG=/run/registry/read-only
LOCK=/run/lock/registry-maintenance.lock
CONFIG=/etc/docker/registry/config.yml
STORAGE=filesystem
STOP_TIMEOUT=25
RETENTION=off

garbage_collect() { docker exec "$NAME" /bin/registry garbage-collect "$@" "$CONFIG"; }
# The container exactly as the program creates it, plus a drain timeout (and the read-only switch).
launch_read_write() { docker run -d --name registry --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host -v /srv/data/registry:/var/lib/registry --env-file /etc/registry/registry.env -e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= -e REGISTRY_HTTP_DRAINTIMEOUT=20s registry:2.8.3; }
launch_read_only() { docker run -d --name registry --label io.registry-program.managed-by=pulumi --restart unless-stopped --network host -v /srv/data/registry:/var/lib/registry --env-file /etc/registry/registry.env -e REGISTRY_HTTP_ADDR=127.0.0.1:5000 -e REGISTRY_HTTP_DEBUG_ADDR= -e REGISTRY_HTTP_DRAINTIMEOUT=20s -e '"'"'REGISTRY_STORAGE_MAINTENANCE_READONLY={"enabled":true}'"'"' registry:2.8.3; }
retention() { python3 -I /usr/local/lib/registry-maintenance/retention.py /etc/registry/retention.json "$@"; }
backup_s3() { python3 -I /usr/local/lib/registry-maintenance/backup_s3.py /etc/registry/backup-s3.json "$@"; }

<host/usr/local/sbin/registry-maintenance.sh sha256=69c410e2daf6a8f45e9d15a36a65495cc6d98975193c5c4ddeffeb5ad893dbb6 quoted>REGISTRY_OPS_FILE_END
cat > "$tmp/1" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
<host/usr/local/lib/registry-maintenance/retention.py sha256=0d9adc29679391de8c34f8df49052e7ce2938cdee5ad606a875aebe619096b98 quoted>REGISTRY_OPS_FILE_END
cat > "$tmp/2" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
<host/usr/local/lib/registry-maintenance/backup_s3.py sha256=12961a8ced4b72fa012874b549474565f9e821fbc32e5446509280814136f192 quoted>REGISTRY_OPS_FILE_END
cat > "$tmp/3" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
{
  "data_dir": "/srv/data/registry",
  "enabled": false,
  "ignore_repositories": [
    "ops/verify-probe"
  ],
  "k3s": "required",
  "keep_tags": [
    "v?[0-9]+[.][0-9]+([.][0-9]+)?([-+][0-9A-Za-z.+-]+)?",
    "latest"
  ],
  "protect": [],
  "registry": "http://127.0.0.1:5000",
  "rules": [
    {
      "keep": 10,
      "repositories": "*"
    }
  ]
}
REGISTRY_OPS_FILE_END
cat > "$tmp/4" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
# Managed by the registry Pulumi program; edits are overwritten.

[Unit]
Description=Registry garbage collection (read-only window)
Wants=docker.service
After=docker.service network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/registry-maintenance gc
TimeoutStopSec=120
REGISTRY_OPS_FILE_END
cat > "$tmp/5" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
# Managed by the registry Pulumi program; edits are overwritten.

[Unit]
Description=Registry backup (read-only window)
Wants=docker.service
After=docker.service network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/registry-maintenance backup
TimeoutStopSec=120
REGISTRY_OPS_FILE_END
cat > "$tmp/6" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
# Managed by the registry Pulumi program; edits are overwritten.

[Unit]
Description=Return the registry to read-write if a maintenance window was cut short
Wants=docker.service
After=docker.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/registry-maintenance recover

[Install]
WantedBy=multi-user.target
REGISTRY_OPS_FILE_END
cat > "$tmp/7" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
# Managed by the registry Pulumi program; edits are overwritten.

[Unit]
Description=Registry garbage collection

[Timer]
OnCalendar=Sun *-*-* 03:00:00
Persistent=true
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
REGISTRY_OPS_FILE_END
cat > "$tmp/8" <<'"'"'REGISTRY_OPS_FILE_END'"'"'
# Managed by the registry Pulumi program; edits are overwritten.

[Unit]
Description=Registry backup

[Timer]
OnCalendar=*-*-* 02:30:00
Persistent=true
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
REGISTRY_OPS_FILE_END
install -d -m 0755 /usr/local/lib/registry-maintenance
[ -d /etc/registry ] || install -d -m 0700 /etc/registry
install -m 0755 "$tmp/0" /usr/local/sbin/registry-maintenance
install -m 0644 "$tmp/1" /usr/local/lib/registry-maintenance/retention.py
install -m 0644 "$tmp/2" /usr/local/lib/registry-maintenance/backup_s3.py
install -m 0644 "$tmp/3" /etc/registry/retention.json
install -m 0644 "$tmp/4" /etc/systemd/system/registry-gc.service
install -m 0644 "$tmp/5" /etc/systemd/system/registry-backup.service
install -m 0644 "$tmp/6" /etc/systemd/system/registry-maintenance-recover.service
install -m 0644 "$tmp/7" /etc/systemd/system/registry-gc.timer
install -m 0644 "$tmp/8" /etc/systemd/system/registry-backup.timer
install -d -m 0700 /srv/backups/registry
systemctl daemon-reload
systemctl enable registry-maintenance-recover.service
systemctl enable registry-gc.timer
systemctl restart registry-gc.timer
systemctl enable registry-backup.timer
systemctl restart registry-backup.timer
systemctl list-timers '"'"'registry-*'"'"' --all --no-pager || true
'