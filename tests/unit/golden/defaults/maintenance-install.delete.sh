sudo -n sh -c 'set -eu
systemctl stop registry-gc.service registry-backup.service 2>/dev/null || true
systemctl disable --now registry-gc.timer registry-backup.timer 2>/dev/null || true
systemctl disable registry-maintenance-recover.service 2>/dev/null || true
rm -f /etc/systemd/system/registry-gc.timer /etc/systemd/system/registry-backup.timer /etc/systemd/system/registry-gc.service /etc/systemd/system/registry-backup.service /etc/systemd/system/registry-maintenance-recover.service /usr/local/sbin/registry-maintenance /usr/local/lib/registry-maintenance/retention.py /etc/registry/retention.json /usr/local/lib/registry-maintenance/backup_s3.py /etc/registry/backup-s3.json
rmdir /usr/local/lib/registry-maintenance 2>/dev/null || true
systemctl daemon-reload
echo '"'"'maintenance timers removed; the backups in /srv/backups/registry and the registry data are kept'"'"'
'