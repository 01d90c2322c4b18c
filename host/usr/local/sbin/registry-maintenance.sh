say() { printf 'registry-maintenance: %s\n' "$*"; }
RUN=''       # gc or backup: the run whose outcome `status` reports
recorded=0
die() {
  printf 'registry-maintenance: %s\n' "$*" >&2
  [ -z "$RUN" ] || record "$RUN" failed "$*"
  exit 1
}

record() {  # record WHAT ok|failed [MESSAGE]: the outcome `status` reports (and, for ok, the last success)
  install -d -m 0755 "$STATE_DIR"
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ) epoch=$(date +%s)
  printf '%s %s %s %s\n' "$2" "$now" "$epoch" "${3:-}" >"$STATE_DIR/$1.last"
  [ "$2" != ok ] || printf '%s %s\n' "$now" "$epoch" >"$STATE_DIR/$1.ok"
  [ "$1" != "$RUN" ] || recorded=1
}

usage() {
  cat >&2 <<'USAGE'
usage: registry-maintenance gc | retention --dry-run | backup | restore ARCHIVE|s3:NAME | recover | status
  gc               window: tag retention (when on), then read-only (every replica): garbage-collect --dry-run (logged), garbage-collect
  retention --dry-run  the tags (and manifests) the next gc would delete, and why others stay; changes nothing
  backup           read-only window: archive the registry's data into the backup directory, keep the newest
  restore ARCHIVE  put an archive back; the current data is moved aside inside the data directory, never deleted
  restore s3:NAME  the same with the off-server copy NAME (downloaded into the backup directory first)
  recover          return to read-write if a window was cut short (runs at boot)
  status           mode, timers, disk usage, backups, and the last gc/retention/backup run: exits 1 if one failed
USAGE
}

wait_ready() {  # wait_ready NAME PORT
  i=0
  until curl -fsS -o /dev/null "http://127.0.0.1:$2/v2/" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge 120 ]; then
      docker logs --tail 20 "$1" >&2 || true
      die "the registry $1 did not answer on 127.0.0.1:$2 within 60 s"
    fi
    sleep 0.5
  done
}

relaunch() {  # relaunch read-only|read-write: recreate every replica in that mode, one at a time
  first=1
  for replica in $REPLICAS; do
    name=${replica%:*} port=${replica#*:}
    # The replica just recreated answers; give Caddy's health check time to see it before the next one stops.
    [ "$first" = 1 ] || sleep "$SETTLE"
    first=0
    docker stop -t "$STOP_TIMEOUT" "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    if [ "$1" = read-only ]; then
      launch_read_only "$name" >/dev/null || die "docker run (read-only) of $name failed"
    else
      launch_read_write "$name" >/dev/null || die "docker run (read-write) of $name failed"
    fi
    wait_ready "$name" "$port"
  done
}

remove_all() {
  for replica in $REPLICAS; do
    docker stop -t "$STOP_TIMEOUT" "${replica%:*}" >/dev/null 2>&1 || true
    docker rm -f "${replica%:*}" >/dev/null 2>&1 || true
  done
}

is_read_only() {  # any replica still read-only
  for replica in $REPLICAS; do
    if docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "${replica%:*}" 2>/dev/null |
      grep -q '^REGISTRY_STORAGE_MAINTENANCE_READONLY='; then
      return 0
    fi
  done
  return 1
}

take_lock() {
  exec 9>"$LOCK"
  flock -w 3600 9 || die "another maintenance run still holds $LOCK after an hour"
}

in_window=0
relaunch_on_close=0
partial=''
refuse_writes() {  # refuse_writes REASON: Caddy answers every write through the site with 503 from now on
  install -d -m 0755 "$(dirname "$FLAG")"
  printf '%s since %s\n' "$1" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$FLAG"
  chmod 0644 "$FLAG"
  in_window=1
}

open_window() {  # open_window REASON: writes refused by Caddy first, then the registry itself read-only
  refuse_writes "$1"
  relaunch_on_close=1
  relaunch read-only
  say "read-only window open for $1: pulls keep working, pushes get 503 until it closes"
}

close_window() {
  [ "$in_window" = 1 ] || return 0
  if [ "$relaunch_on_close" = 1 ]; then
    relaunch read-write
    relaunch_on_close=0
  fi
  rm -f "$FLAG"
  in_window=0
  say "read-only window closed: the registry accepts pushes again"
}

finish() {
  rc=$?
  [ -z "$partial" ] || rm -f "$partial"
  if [ -n "$RUN" ] && [ "$recorded" = 0 ]; then
    if [ "$rc" = 0 ]; then record "$RUN" ok; else record "$RUN" failed "exited with status $rc"; fi
  fi
  close_window || rc=1
  exit "$rc"
}
trap finish EXIT
trap 'exit 1' HUP INT TERM

usage_kib() {
  if [ -d "$DATA_DIR/docker" ]; then du -sk "$DATA_DIR/docker" | cut -f1; else echo 0; fi
}

s3_only() {  # s3_only WHAT: with S3 storage the data is not on this host; say whose job WHAT is, and stop
  say "storage is $STORAGE: $1"
  exit 0
}

collect() {  # collect [--dry-run]: garbage-collect inside the container (it reads the container's env)
  if out=$(garbage_collect "$@" 2>&1); then
    printf '%s\n' "$out"
  else
    printf '%s\n' "$out" >&2
    die "garbage-collect $* failed"
  fi
}

need_python() {
  command -v python3 >/dev/null 2>&1 || die "tag retention needs python3 on this host (apt-get install python3-minimal)"
}

cmd_gc() {
  RUN=gc
  take_lock
  if [ "$STORAGE" = filesystem ] && [ ! -d "$DATA_DIR/docker/registry/v2/repositories" ]; then
    say "no repositories yet; nothing to collect"
    return 0
  fi
  before=$(usage_kib)
  retention_failed=0
  if [ "$RETENTION" = on ]; then
    # Deletes need a registry that is not read-only (Distribution answers 405 then), so they come first: Caddy
    # already refuses pushes (no tag appears or moves meanwhile), while the registry takes the deletes on loopback.
    if command -v python3 >/dev/null 2>&1; then
      refuse_writes "tag retention and garbage collection"
      say "tag retention: pushes through the site get 503 from now on; deleting on 127.0.0.1:$PORT"
      if retention; then record retention ok; else retention_failed=1; fi
    else
      say "tag retention skipped: python3 is not installed on this host"
      retention_failed=1
    fi
    [ "$retention_failed" = 0 ] || record retention failed "tag retention failed (journalctl -u registry-gc says why); garbage collection still ran"
  fi
  open_window "garbage collection"
  say "dry run (nothing is deleted):"
  collect --dry-run
  say "collecting:"
  collect
  close_window
  if [ "$STORAGE" = filesystem ]; then
    after=$(usage_kib)
    say "garbage collection done: $before KiB -> $after KiB ($((before - after)) KiB reclaimed)"
  else
    say "garbage collection done in the $STORAGE (the store reports its own usage)"
  fi
  [ "$retention_failed" = 0 ] || die "tag retention failed (see above); garbage collection still ran"
}

cmd_retention() {
  [ "${1:-}" = --dry-run ] && [ "$#" = 1 ] ||
    { usage; die "retention deletes only inside 'registry-maintenance gc'; preview it with: retention --dry-run"; }
  need_python
  take_lock
  retention --dry-run
}

prune() {
  set -- "$BACKUP_DIR"/registry-*.tar
  [ -e "$1" ] || return 0
  excess=$(($# - KEEP))
  while [ "$excess" -gt 0 ]; do
    rm -f "$1" "$1.sha256"
    say "removed old backup $1"
    shift
    excess=$((excess - 1))
  done
}

check_space() {  # before the window: refuse an archive that would leave less than MIN_FREE_PERCENT of the disk free
  # The archive is the data plus a tar header (and padding) per entry: at most 1 KiB each.
  need=$(($(usage_kib) + $(find "$DATA_DIR/docker" | wc -l)))
  total=$(df -Pk "$BACKUP_DIR" | awk 'NR == 2 {print $2}')
  avail=$(df -Pk "$BACKUP_DIR" | awk 'NR == 2 {print $4}')
  margin=$((total * MIN_FREE_PERCENT / 100))
  if [ $((avail - need)) -lt "$margin" ]; then
    die "backup refused: the archive needs about $((need / 1024)) MiB and $BACKUP_DIR has $((avail / 1024)) MiB free of $((total / 1024)) MiB; $MIN_FREE_PERCENT% ($((margin / 1024)) MiB) must stay free (backupMinFreePercent). Nothing was written and the registry stayed writable: free space there, lower backupKeep or move backupDir"
  fi
  say "space: the archive needs about $((need / 1024)) MiB; $BACKUP_DIR has $((avail / 1024)) MiB free of $((total / 1024)) MiB"
}

cmd_backup() {
  [ "$STORAGE" = filesystem ] || s3_only "back it up with the store's own means (bucket versioning, replication, snapshots); no archive is written"
  take_lock
  if [ ! -d "$DATA_DIR/docker" ]; then
    say "the registry holds no data yet; no backup written"
    return 0
  fi
  RUN=backup
  umask 077
  install -d -m 0700 "$BACKUP_DIR"
  check_space
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  archive="$BACKUP_DIR/registry-$stamp.tar"
  partial="$BACKUP_DIR/.registry-$stamp.tar.partial"
  open_window backup
  tar -C "$DATA_DIR" -cf "$partial" docker || die "tar failed; no backup written"
  close_window
  tar -tf "$partial" >/dev/null || die "the new archive does not read back; no backup written"
  sum=$(sha256sum <"$partial" | cut -d' ' -f1)
  printf '%s  %s\n' "$sum" "registry-$stamp.tar" >"$archive.sha256"
  mv "$partial" "$archive"
  partial=''
  say "backup written: $archive ($(du -h "$archive" | cut -f1), sha256 $sum)"
  if [ -n "$BACKUP_S3" ]; then
    if ! { backup_s3 put "$archive" "registry-$stamp.tar" && backup_s3 put "$archive.sha256" "registry-$stamp.tar.sha256"; }; then
      die "the off-server copy to $BACKUP_S3 failed (see above); the archive is kept in $archive"
    fi
    say "off-server copy written: registry-$stamp.tar in $BACKUP_S3"
  fi
  prune
  [ -z "$BACKUP_S3" ] || prune_s3
}

prune_s3() {  # keep the newest KEEP off-server copies too
  names=$(backup_s3 list) || die "listing the off-server copies in $BACKUP_S3 failed (see above)"
  archives=$(printf '%s\n' "$names" | grep '^registry-.*\.tar$' || true)
  excess=$(($(printf '%s\n' "$archives" | grep -c . || true) - KEEP))
  [ "$excess" -gt 0 ] || return 0
  printf '%s\n' "$archives" | head -n "$excess" | while IFS= read -r old; do
    if ! { backup_s3 delete "$old" && backup_s3 delete "$old.sha256"; }; then die "removing the old off-server copy $old failed"; fi
    say "removed old off-server copy $old"
  done
}

fetch_s3() {  # fetch_s3 NAME: the off-server copy NAME (and its .sha256) into the backup directory; sets archive
  [ -n "$BACKUP_S3" ] || die "no off-server destination is configured (backupS3Bucket); restore an archive file instead"
  case "$1" in registry-*.tar) ;; *) die "s3:$1: the name of an off-server copy is registry-<UTC time>.tar" ;; esac
  case "$1" in */*) die "s3:$1: a name, not a path" ;; esac
  umask 077
  install -d -m 0700 "$BACKUP_DIR"
  say "downloading $1 from $BACKUP_S3"
  if ! { backup_s3 get "$1" "$BACKUP_DIR/$1" && backup_s3 get "$1.sha256" "$BACKUP_DIR/$1.sha256"; }; then
    die "downloading $1 from $BACKUP_S3 failed (see above); nothing was changed"
  fi
  archive="$BACKUP_DIR/$1"
}

cmd_restore() {
  archive=${1:-}
  case "$archive" in s3:*) fetch_s3 "${archive#s3:}" ;; esac
  [ "$STORAGE" = filesystem ] || die "storage is $STORAGE: restore the bucket with the store's own means (an earlier object version, a replica); this command restores data-directory archives only"
  [ -n "$archive" ] || { usage; die "restore needs an archive, e.g. the newest of: ls $BACKUP_DIR"; }
  [ -f "$archive" ] || die "$archive: no such file"
  if [ -f "$archive.sha256" ]; then
    want=$(cut -d' ' -f1 "$archive.sha256")
    got=$(sha256sum <"$archive" | cut -d' ' -f1)
    [ "$want" = "$got" ] || die "$archive does not match $archive.sha256; nothing was changed"
  fi
  tar -tf "$archive" | grep -q '^\(\./\)\{0,1\}docker/registry/v2/' ||
    die "$archive holds no registry data (docker/registry/v2/...); nothing was changed"
  take_lock
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  staging="$DATA_DIR/.restore-$stamp"
  aside="$DATA_DIR/.before-restore-$stamp"
  install -d -m 0700 "$staging"
  say "extracting $archive"
  if ! tar -C "$staging" -xf "$archive"; then
    rm -rf "$staging"
    die "extracting $archive failed; nothing was changed"
  fi
  install -d -m 0755 "$(dirname "$FLAG")"
  printf 'restore since %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$FLAG"
  chmod 0644 "$FLAG"
  in_window=1
  relaunch_on_close=1
  remove_all
  if [ -e "$DATA_DIR/docker" ]; then
    install -d -m 0700 "$aside"
    mv "$DATA_DIR/docker" "$aside/docker"
  fi
  if ! mv "$staging/docker" "$DATA_DIR/docker"; then
    [ ! -e "$aside/docker" ] || mv "$aside/docker" "$DATA_DIR/docker"
    die "could not move the restored data into place; the previous data is back"
  fi
  rmdir "$staging" 2>/dev/null || true
  close_window
  repos=$(find "$DATA_DIR/docker/registry/v2/repositories" -type d -name _manifests | wc -l)
  tags=$(find "$DATA_DIR/docker/registry/v2/repositories" -path '*/_manifests/tags/*/current/link' | wc -l)
  say "restored $repos repositories with $tags tags from $archive"
  if [ -d "$aside" ]; then
    say "the data before the restore is kept in $aside: delete it once the restore is checked"
  fi
  say "check: list the catalog and pull one image you know through the public name (README.md, Operations)"
}

cmd_recover() {
  exec 9>"$LOCK"
  if ! flock -n 9; then
    say "a maintenance run is in progress; nothing to recover"
    return 0
  fi
  if is_read_only; then
    in_window=1
    relaunch_on_close=1
    close_window
    say "a maintenance window had been cut short; recovered"
  else
    rm -f "$FLAG"
    say "the registry is not in a maintenance window; nothing to do"
  fi
}

age() {  # age EPOCH: how long ago, in words
  s=$(($(date +%s) - $1))
  if [ "$s" -ge 86400 ]; then echo "$((s / 86400)) d $((s % 86400 / 3600)) h"
  elif [ "$s" -ge 3600 ]; then echo "$((s / 3600)) h $((s % 3600 / 60)) min"
  else echo "$((s / 60)) min"; fi
}

report() {  # report WHAT: the last run's outcome; fails when that run failed
  if [ ! -f "$STATE_DIR/$1.last" ]; then
    say "last $1: has not run yet"
    return 0
  fi
  read -r result at epoch message <"$STATE_DIR/$1.last"
  if [ "$result" = ok ]; then
    say "last $1: ok at $at ($(age "$epoch") ago)"
    return 0
  fi
  say "last $1: FAILED at $at ($(age "$epoch") ago): $message"
  return 1
}

cmd_status() {
  for replica in $REPLICAS; do
    state=$(docker inspect -f '{{.State.Status}} since {{.State.StartedAt}}' "${replica%:*}" 2>/dev/null || echo 'missing')
    say "container ${replica%:*} (127.0.0.1:${replica#*:}): $state"
  done
  if is_read_only; then say "mode: read-only (maintenance window)"; else say "mode: read-write"; fi
  [ ! -f "$FLAG" ] || say "window: $(cat "$FLAG")"
  if [ "$STORAGE" = filesystem ]; then
    say "data: $(usage_kib) KiB in $DATA_DIR/docker, $(df -h --output=avail "$DATA_DIR" | tail -n 1 | tr -d ' ') free"
  else
    say "data: $STORAGE (backups are the store's job: versioning, replication)"
  fi
  say "tag retention in the GC window: $RETENTION (preview: registry-maintenance retention --dry-run)"
  [ -z "$BACKUP_S3" ] || say "off-server copies: $BACKUP_S3 (keeping $KEEP; restore one with: registry-maintenance restore s3:NAME)"
  say "backups in $BACKUP_DIR (keeping $KEEP):"
  found=0
  for f in "$BACKUP_DIR"/registry-*.tar; do
    [ -e "$f" ] || continue
    found=1
    printf '  %s  %s\n' "$(du -h "$f" | cut -f1)" "$f"
  done
  [ "$found" = 1 ] || echo '  none'
  systemctl list-timers 'registry-*' --all --no-pager || true
  failed=''
  report gc || failed="$failed gc"
  if [ "$RETENTION" = on ]; then report retention || failed="$failed retention"; fi
  if [ "$STORAGE" = filesystem ]; then
    report backup || failed="$failed backup"
    if [ -f "$STATE_DIR/backup.ok" ]; then
      read -r at epoch <"$STATE_DIR/backup.ok"
      say "last successful backup: $at ($(age "$epoch") ago)"
    else
      say "last successful backup: none yet"
    fi
  fi
  [ -z "$failed" ] || die "status: the last run of$failed failed (see above)"
}

[ "$(id -u)" = 0 ] || die "run as root: sudo registry-maintenance $*"
case "${1:-}" in
  gc) cmd_gc ;;
  retention) shift; cmd_retention "$@" ;;
  backup) cmd_backup ;;
  restore) shift; cmd_restore "$@" ;;
  recover) cmd_recover ;;
  status) cmd_status ;;
  *) usage; exit 2 ;;
esac
