"""Pure renderers for the operations the program installs or runs on the host.

The maintenance script and its systemd units (garbage collection and backups in a read-only window, restore),
and the deploy check. Plain values in, text out; every value is quoted through `q`; no output holds a secret.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components import retention
from components.render import MAINTENANCE_FLAG, StorageSpec
from components.scripts import (
    DRAIN_ENV,
    MAINTENANCE_LOCK,
    REPLICA_SETTLE_SECONDS,
    STOP_TIMEOUT,
    q,
    registry_docker_run,
    replica_names,
    replica_ports,
)

MAINTENANCE_SCRIPT = "/usr/local/sbin/registry-maintenance"
UNIT_DIR = "/etc/systemd/system"
GC_UNIT = "registry-gc"
BACKUP_UNIT = "registry-backup"
RECOVER_UNIT = "registry-maintenance-recover"
LOCK_FILE = MAINTENANCE_LOCK
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
"""The config file inside the registry:2 image; garbage-collect reads it (plus the container's env)."""
REGISTRY3_CONFIG = "/etc/distribution/config.yml"
"""The same file in the registry:3 image."""


def registry_config_path(distribution: int) -> str:
    """Where the image's own config file is, for `registry garbage-collect CONFIG`."""
    return REGISTRY3_CONFIG if distribution >= 3 else REGISTRY_CONFIG
READ_ONLY_ENV = {"REGISTRY_STORAGE_MAINTENANCE_READONLY": '{"enabled":true}'}
RETENTION_DIR = "/usr/local/lib/registry-maintenance"
RETENTION_SCRIPT = f"{RETENTION_DIR}/retention.py"
RETENTION_CONFIG = "/etc/registry/retention.json"

PROBE_REPOSITORY = "ops/verify-probe"
PROBE_TAG = "v1"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# `uname -m` patterns -> (GOARCH, variant): the platforms containerd matches a single-platform probe against.
PROBE_PLATFORMS: tuple[tuple[str, str, str | None], ...] = (
    ("x86_64|amd64", "amd64", None),
    ("aarch64|arm64", "arm64", None),
    ("armv7*|armv8l", "arm", "v7"),
)


# --- maintenance: script, units, install and removal ----------------------------------------------------------


@dataclass(frozen=True)
class RetentionSpec:
    """Tag retention in the GC window (components/retention.py); the settings are installed even when it is off."""

    enabled: bool = False
    rules: tuple[tuple[str, int], ...] = ()
    """(repository glob, how many of the newest tags to keep); the first match wins."""
    keep_tags: tuple[str, ...] = ()
    """Regular expressions (whole tag): such tags always stay."""
    protect: tuple[str, ...] = ()
    """Digests never deleted."""
    k3s: bool = False
    """k3s runs on this host: if it cannot say which images it holds, nothing is deleted."""


@dataclass(frozen=True)
class MaintenanceSpec:
    """What the maintenance script must know to recreate the registry container exactly as the program does."""

    container: str
    image: str
    port: int
    data_dir: str
    env_file: str
    backup_dir: str
    backup_keep: int
    gc_delete_untagged: bool = False
    retention: RetentionSpec = field(default_factory=RetentionSpec)
    distribution: int = 2
    """Distribution's major version (where the image keeps its config file)."""
    storage: StorageSpec = field(default_factory=StorageSpec)
    """filesystem (the data directory, archived by backups) or S3 (the store's own backups)."""
    replicas: int = 1
    """Registry containers sharing the storage: a window makes every one read-only, one at a time."""


def render_retention_config(spec: MaintenanceSpec) -> str:
    """/etc/registry/retention.json: what the retention script reads (no secret: the registry is reached on loopback)."""
    policy = spec.retention
    document = {
        "enabled": policy.enabled,
        "registry": f"http://127.0.0.1:{spec.port}",
        "data_dir": spec.data_dir,
        "rules": [{"repositories": pattern, "keep": keep} for pattern, keep in policy.rules],
        "keep_tags": list(policy.keep_tags),
        "protect": list(policy.protect),
        "k3s": "required" if policy.k3s else "if-present",
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def retention_script() -> str:
    """The retention program, shipped as it is in this repository."""
    return Path(retention.__file__).read_text(encoding="utf-8")


_MAINTENANCE_BODY = r"""
say() { printf 'registry-maintenance: %s\n' "$*"; }
die() { printf 'registry-maintenance: %s\n' "$*" >&2; exit 1; }

usage() {
  cat >&2 <<'USAGE'
usage: registry-maintenance gc | retention --dry-run | backup | restore ARCHIVE | recover | status
  gc               window: tag retention (when on), then read-only (every replica): garbage-collect --dry-run (logged), garbage-collect
  retention --dry-run  the tags (and manifests) the next gc would delete, and why others stay; changes nothing
  backup           read-only window: archive the registry's data into the backup directory, keep the newest
  restore ARCHIVE  put an archive back; the current data is moved aside inside the data directory, never deleted
  recover          return to read-write if a window was cut short (runs at boot)
  status           mode, timers, disk usage and backups
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
      retention || retention_failed=1
    else
      say "tag retention skipped: python3 is not installed on this host"
      retention_failed=1
    fi
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

cmd_backup() {
  [ "$STORAGE" = filesystem ] || s3_only "back it up with the store's own means (bucket versioning, replication, snapshots); no archive is written"
  take_lock
  if [ ! -d "$DATA_DIR/docker" ]; then
    say "the registry holds no data yet; no backup written"
    return 0
  fi
  umask 077
  install -d -m 0700 "$BACKUP_DIR"
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
  prune
}

cmd_restore() {
  archive=${1:-}
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
  say "backups in $BACKUP_DIR (keeping $KEEP):"
  found=0
  for f in "$BACKUP_DIR"/registry-*.tar; do
    [ -e "$f" ] || continue
    found=1
    printf '  %s  %s\n' "$(du -h "$f" | cut -f1)" "$f"
  done
  [ "$found" = 1 ] || echo '  none'
  systemctl list-timers 'registry-*' --all --no-pager || true
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
"""


def render_maintenance_script(spec: MaintenanceSpec) -> str:
    """/usr/local/sbin/registry-maintenance: GC, backup, restore, recover and status around a read-only window."""
    ca = spec.storage.ca_file if spec.storage.s3 else None
    replicas = list(zip(replica_names(spec.container, spec.replicas), replica_ports(spec.port, spec.replicas), strict=True))

    def launcher(env: Mapping[str, str]) -> str:
        runs = [registry_docker_run(n, spec.image, p, spec.data_dir, spec.env_file, env, ca) for n, p in replicas]
        if len(runs) == 1:
            return f"{{ {runs[0]}; }}"
        cases = " ".join(f"{q(n)}) {run} ;;" for (n, _), run in zip(replicas, runs, strict=True))
        return f'{{ case "$1" in {cases} *) return 1 ;; esac; }}'

    launch, launch_ro = launcher(DRAIN_ENV), launcher({**DRAIN_ENV, **READ_ONLY_ENV})
    untagged = " --delete-untagged" if spec.gc_delete_untagged else ""
    header = [
        "#!/bin/sh",
        "# Managed by the registry Pulumi program; edits are overwritten.",
        "# A maintenance window runs the registry read-only (Distribution's storage.maintenance.readonly),",
        "# so garbage collection and backups see a store no push can change underneath them.",
        "set -eu",
        "",
        f"NAME={q(spec.container)}",
        f"PORT={spec.port}",
        f"REPLICAS={q(' '.join(f'{n}:{p}' for n, p in replicas))}",
        f"SETTLE={REPLICA_SETTLE_SECONDS}",
        f"DATA_DIR={q(spec.data_dir)}",
        f"BACKUP_DIR={q(spec.backup_dir)}",
        f"KEEP={spec.backup_keep}",
        f"FLAG={q(MAINTENANCE_FLAG)}",
        f"LOCK={q(LOCK_FILE)}",
        f"CONFIG={q(registry_config_path(spec.distribution))}",
        f"STORAGE={q(spec.storage.describe())}",
        f"STOP_TIMEOUT={STOP_TIMEOUT}",
        f"RETENTION={'on' if spec.retention.enabled else 'off'}",
        "",
        # --delete-untagged is off by default: in 2.8 it deletes the per-platform children of multi-arch images.
        f'garbage_collect() {{ docker exec "$NAME" /bin/registry garbage-collect "$@"{untagged} "$CONFIG"; }}',
        "# The container exactly as the program creates it, plus a drain timeout (and the read-only switch).",
        f"launch_read_write() {launch}",
        f"launch_read_only() {launch_ro}",
        f"retention() {{ python3 -I {q(RETENTION_SCRIPT)} {q(RETENTION_CONFIG)} \"$@\"; }}",
    ]
    return "\n".join(header) + "\n" + _MAINTENANCE_BODY


def render_unit(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    """A systemd unit file from (section, [(key, value)]) pairs, in the given order."""
    blocks = ["# Managed by the registry Pulumi program; edits are overwritten."]
    for section, entries in sections:
        blocks.append("\n".join([f"[{section}]", *(f"{key}={value}" for key, value in entries)]))
    return "\n\n".join(blocks) + "\n"


def render_service(description: str, action: str) -> str:
    """A oneshot service running `registry-maintenance ACTION` after Docker is up."""
    return render_unit(
        [
            ("Unit", [("Description", description), ("Wants", "docker.service"), ("After", "docker.service network-online.target")]),
            (
                "Service",
                [
                    ("Type", "oneshot"),
                    ("ExecStart", f"{MAINTENANCE_SCRIPT} {action}"),
                    # On stop the script's exit trap recreates the read-write container; give it the time.
                    ("TimeoutStopSec", "120"),
                ],
            ),
        ]
    )


def render_recover_service() -> str:
    """At boot: a window cut short by a reboot would otherwise leave the registry read-only for good."""
    return render_unit(
        [
            (
                "Unit",
                [
                    ("Description", "Return the registry to read-write if a maintenance window was cut short"),
                    ("Wants", "docker.service"),
                    ("After", "docker.service"),
                ],
            ),
            ("Service", [("Type", "oneshot"), ("ExecStart", f"{MAINTENANCE_SCRIPT} recover")]),
            ("Install", [("WantedBy", "multi-user.target")]),
        ]
    )


def render_timer(description: str, on_calendar: str) -> str:
    """A persistent timer (a run missed while the host was down happens at the next boot)."""
    return render_unit(
        [
            ("Unit", [("Description", description)]),
            ("Timer", [("OnCalendar", on_calendar), ("Persistent", "true"), ("RandomizedDelaySec", "60")]),
            ("Install", [("WantedBy", "timers.target")]),
        ]
    )


@dataclass(frozen=True)
class HostFile:
    path: str
    mode: str
    content: str


def maintenance_files(spec: MaintenanceSpec, gc_schedule: str, backup_schedule: str) -> list[HostFile]:
    """Every file the maintenance install writes; a timer only for a non-empty schedule."""
    files = [
        HostFile(MAINTENANCE_SCRIPT, "0755", render_maintenance_script(spec)),
        HostFile(RETENTION_SCRIPT, "0644", retention_script()),
        HostFile(RETENTION_CONFIG, "0644", render_retention_config(spec)),
        HostFile(f"{UNIT_DIR}/{GC_UNIT}.service", "0644", render_service("Registry garbage collection (read-only window)", "gc")),
        HostFile(f"{UNIT_DIR}/{BACKUP_UNIT}.service", "0644", render_service("Registry backup (read-only window)", "backup")),
        HostFile(f"{UNIT_DIR}/{RECOVER_UNIT}.service", "0644", render_recover_service()),
    ]
    if gc_schedule:
        files.append(HostFile(f"{UNIT_DIR}/{GC_UNIT}.timer", "0644", render_timer("Registry garbage collection", gc_schedule)))
    if backup_schedule:
        files.append(HostFile(f"{UNIT_DIR}/{BACKUP_UNIT}.timer", "0644", render_timer("Registry backup", backup_schedule)))
    return files


def _heredoc(content: str, target: str) -> list[str]:
    marker = "REGISTRY_OPS_FILE_END"
    if marker in content:
        raise ValueError(f"{target}: the file content contains the here-document marker {marker}")
    return [f"cat > {target} <<'{marker}'", *content.rstrip("\n").split("\n"), marker]


def maintenance_install(spec: MaintenanceSpec, gc_schedule: str, backup_schedule: str) -> str:
    """Check the schedules, write the script and units, enable the timers; a disabled timer is removed.

    With S3 storage there is no backup timer: the data is not on this host (the store backs it up).
    """
    if spec.storage.s3:
        backup_schedule = ""
    files = maintenance_files(spec, gc_schedule, backup_schedule)
    lines = [
        "set -eu",
        "check_calendar() {  # check_calendar SETTING EXPRESSION: nothing is changed on a bad schedule",
        '  if ! out=$(systemd-analyze calendar "$2" 2>&1); then',
        "    printf '%s = %s is not a valid systemd OnCalendar expression:\\n%s\\n' \"$1\" \"$2\" \"$out\" >&2",
        "    exit 1",
        "  fi",
        "}",
    ]
    for setting, schedule in (("gcSchedule", gc_schedule), ("backupSchedule", backup_schedule)):
        if schedule:
            lines.append(f"check_calendar {setting} {q(schedule)}")
    lines += ["umask 022", "tmp=$(mktemp -d)", "trap 'rm -rf \"$tmp\"' EXIT"]
    for index, file in enumerate(files):
        lines += _heredoc(file.content, f'"$tmp/{index}"')
    lines.append(f"install -d -m 0755 {q(RETENTION_DIR)}")
    # /etc/registry holds the container's env file (0700); create it only if missing, never loosen it.
    lines.append("[ -d /etc/registry ] || install -d -m 0700 /etc/registry")
    for index, file in enumerate(files):
        lines.append(f'install -m {file.mode} "$tmp/{index}" {q(file.path)}')
    lines.append(f"install -d -m 0700 {q(spec.backup_dir)}")
    for unit, schedule in ((GC_UNIT, gc_schedule), (BACKUP_UNIT, backup_schedule)):
        if not schedule:
            timer = f"{UNIT_DIR}/{unit}.timer"
            lines.append(f"if [ -e {q(timer)} ]; then systemctl disable --now {q(unit + '.timer')} || true; rm -f {q(timer)}; fi")
    lines += ["systemctl daemon-reload", f"systemctl enable {q(RECOVER_UNIT + '.service')}"]
    for unit, action, schedule in ((GC_UNIT, "gc", gc_schedule), (BACKUP_UNIT, "backup", backup_schedule)):
        if action == "backup" and spec.storage.s3:
            lines.append(f"echo {q(f'{unit}.timer is not installed: with S3 storage the store backs the data up (versioning, replication)')}")
        elif schedule:
            lines.append(f"systemctl enable {q(unit + '.timer')}")
            # restart: a changed OnCalendar takes effect now, not at the next boot.
            lines.append(f"systemctl restart {q(unit + '.timer')}")
        else:
            lines.append(f"echo {q(f'{unit}.timer is disabled; run sudo {MAINTENANCE_SCRIPT} {action} by hand')}")
    lines.append("systemctl list-timers 'registry-*' --all --no-pager || true")
    return "\n".join(lines) + "\n"


def maintenance_remove(backup_dir: str) -> str:
    """Stop any running window (its trap makes the registry read-write), remove script and units; keep data and backups."""
    units = [f"{GC_UNIT}.timer", f"{BACKUP_UNIT}.timer", f"{GC_UNIT}.service", f"{BACKUP_UNIT}.service", f"{RECOVER_UNIT}.service"]
    lines = [
        "set -eu",
        f"systemctl stop {q(GC_UNIT + '.service')} {q(BACKUP_UNIT + '.service')} 2>/dev/null || true",
        f"systemctl disable --now {q(GC_UNIT + '.timer')} {q(BACKUP_UNIT + '.timer')} 2>/dev/null || true",
        f"systemctl disable {q(RECOVER_UNIT + '.service')} 2>/dev/null || true",
        "rm -f " + " ".join(q(f"{UNIT_DIR}/{unit}") for unit in units)
        + f" {q(MAINTENANCE_SCRIPT)} {q(RETENTION_SCRIPT)} {q(RETENTION_CONFIG)}",
        f"rmdir {q(RETENTION_DIR)} 2>/dev/null || true",
        "systemctl daemon-reload",
        f"echo {q(f'maintenance timers removed; the backups in {backup_dir} and the registry data are kept')}",
    ]
    return "\n".join(lines) + "\n"


# --- the deploy check ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeImage:
    """A tiny single-platform image (one empty layer) the check pushes and k3s pulls."""

    platform: str
    layer: bytes
    layer_digest: str
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _empty_layer() -> tuple[bytes, str]:
    """(gzip of an empty tar, its diff_id), byte-for-byte the same on every run."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT):
        pass
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=9, mtime=0), _digest(tar)


def probe_image(architecture: str, variant: str | None = None) -> ProbeImage:
    layer, diff_id = _empty_layer()
    config_doc: dict[str, object] = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.description": "registry deploy check probe"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    if variant:
        config_doc["variant"] = variant
    config = json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": _digest(layer)}],
    }
    manifest = json.dumps(manifest_doc, sort_keys=True, separators=(",", ":")).encode()
    platform = f"linux/{architecture}" + (f"/{variant}" if variant else "")
    return ProbeImage(platform, layer, _digest(layer), config, _digest(config), manifest, _digest(manifest))


def curl_user_line(username: str, password: str) -> str:
    """One curl config line (`curl -K -`) carrying a credential, escaped the way curl reads quoted values."""
    value = f"{username}:{password}".replace("\\", "\\\\").replace('"', '\\"')
    return f'user = "{value}"'


def verify_stdin(push_user: str, push_password: str, pull_user: str, pull_password: str) -> str:
    """The deploy check's stdin: the push credential's curl config line, then the pull credential's."""
    return curl_user_line(push_user, push_password) + "\n" + curl_user_line(pull_user, pull_password) + "\n"


@dataclass(frozen=True)
class VerifySpec:
    domain: str
    ca_file: str | None = None
    """CA file on the host for the registry's certificate; the system trust store when None."""
    k3s: bool = False
    """Also pull the probe image through k3s's containerd (`k3s crictl pull`) with registries.yaml's credential."""
    allowlist: bool = False
    """Whether an allowlist guards the site (a 403 then most likely means the host's own address is not in it)."""
    deadline_seconds: int = 180
    """How long the site may take to answer (first certificate, Caddy reload, k3s restart)."""


_VERIFY_BODY = r"""
IFS= read -r push_auth || true
IFS= read -r pull_auth || true
if [ -z "${push_auth:-}" ] || [ -z "${pull_auth:-}" ]; then
  echo 'verify: the two credentials did not arrive on stdin' >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deadline=$(($(date +%s) + DEADLINE))
failures=0

request() {  # request AS METHOD URL [curl options]: prints the HTTP status (000: no answer)
  as=$1 method=$2 url=$3
  shift 3
  case "$as" in
    push) printf '%s\n' "$push_auth" ;;
    pull) printf '%s\n' "$pull_auth" ;;
    *) : ;;
  esac | curl_tls -sS --max-time 60 -K - -X "$method" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' \
    "$@" "$url" 2>"$tmp/error" || true
}

check() {  # check NAME WANT AS METHOD URL [curl options]: retries "no answer" and 502-504 until the deadline
  name=$1 want=$2
  shift 2
  while :; do
    : >"$tmp/body"
    : >"$tmp/error"
    got=$(request "$@")
    case "$got" in 000 | 502 | 503 | 504) ;; *) break ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 2
  done
  if [ "$got" = "$want" ]; then
    echo "verify: ok: $name: HTTP $got"
    return 0
  fi
  failures=$((failures + 1))
  if [ "$got" = 000 ]; then
    detail=$(tail -n 1 "$tmp/error")
    printf 'verify: FAILED: %s: no HTTP answer from %s (expected %s): %s\n' "$name" "$BASE" "$want" "$detail" >&2
    case "$detail" in *certificate* | *SSL* | *TLS*)
      echo "verify: hint: the certificate may not be issued yet or not be trusted here (journalctl -u caddy; registryCaFile)" >&2 ;;
    esac
  else
    body=$(head -c 300 "$tmp/body" | tr -d '\r\n')
    printf 'verify: FAILED: %s: got HTTP %s, expected %s; response: %s\n' "$name" "$got" "$want" "${body:-<empty>}" >&2
    if [ "$got" = 403 ] && [ "$ALLOWLIST" = yes ] && [ "$body" = forbidden ]; then
      echo "verify: hint: the check runs on the server itself: its own public address must be in the allowlist (or set verify=false)" >&2
    fi
  fi
  return 1
}

push_blob() {  # push_blob FILE DIGEST: monolithic upload (POST, then PUT with ?digest=)
  check "push credential starts a blob upload" 202 push POST "$BASE/v2/$PROBE/blobs/uploads/" -H 'Content-Length: 0' ||
    return 1
  location=$(sed -n 's/^[Ll][Oo][Cc][Aa][Tt][Ii][Oo][Nn]: *//p' "$tmp/headers" | tr -d '\r' | tail -n 1)
  case "$location" in /*) location="$BASE$location" ;; esac
  case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
  check "push credential uploads blob $2" 201 push PUT "$location${sep}digest=$2" \
    -H 'Content-Type: application/octet-stream' --data-binary "@$1"
}

check 'anonymous GET /v2/ is challenged' 401 anon GET "$BASE/v2/" || true
check 'push credential GET /v2/' 200 push GET "$BASE/v2/" || true
check 'pull credential GET /v2/' 200 pull GET "$BASE/v2/" || true
check 'pull credential is refused a write (POST blob upload)' 403 pull POST "$BASE/v2/$PROBE/blobs/uploads/" \
  -H 'Content-Length: 0' || true

if probe_files "$tmp"; then
  printf '%s' "$LAYER" | base64 -d >"$tmp/layer"
  if push_blob "$tmp/layer" "$LAYER_DIGEST" && push_blob "$tmp/config" "$config_digest" &&
    check "push credential pushes $PROBE:$TAG" 201 push PUT "$BASE/v2/$PROBE/manifests/$TAG" \
      -H "Content-Type: $MANIFEST_TYPE" --data-binary "@$tmp/manifest"; then
    check "pull credential reads $PROBE:$TAG" 200 pull GET "$BASE/v2/$PROBE/manifests/$TAG" \
      -H "Accept: $MANIFEST_TYPE" || true
    if [ "$K3S" = yes ]; then
      ref="$REGISTRY/$PROBE:$TAG"
      k3s_deadline=$(($(date +%s) + 120))
      while :; do
        if out=$(k3s crictl pull "$ref" 2>&1); then
          echo "verify: ok: k3s pulled $ref with the credential in registries.yaml: $(printf '%s\n' "$out" | tail -n 1)"
          break
        fi
        if [ "$(date +%s)" -ge "$k3s_deadline" ]; then
          failures=$((failures + 1))
          printf 'verify: FAILED: k3s could not pull %s with the credential in registries.yaml (k3s crictl pull):\n%s\n' \
            "$ref" "$(printf '%s\n' "$out" | tail -n 5)" >&2
          break
        fi
        sleep 3
      done
    fi
  else
    echo "verify: the pull checks were skipped: the probe image could not be pushed" >&2
  fi
else
  failures=$((failures + 1))
  echo "verify: FAILED: no probe image for this machine's architecture ($(uname -m)); set verify=false" >&2
fi

if [ "$failures" -gt 0 ]; then
  printf 'verify: %s check(s) failed for %s: the changes are applied but the registry does not serve as it should (README.md, Operations: Troubleshooting)\n' \
    "$failures" "$BASE" >&2
  exit 1
fi
echo "verify: all checks passed for $BASE"
"""


def render_verify_script(spec: VerifySpec) -> str:
    """The deploy check, run on the host through the public name; credentials come as curl config lines on stdin."""
    image = probe_image("amd64")
    tls = f" --cacert {q(spec.ca_file)}" if spec.ca_file else ""
    lines = [
        "set -eu",
        f"REGISTRY={q(spec.domain)}",
        'BASE="https://$REGISTRY"',
        f"PROBE={q(PROBE_REPOSITORY)}",
        f"TAG={q(PROBE_TAG)}",
        f"MANIFEST_TYPE={q(MANIFEST_TYPE)}",
        f"DEADLINE={spec.deadline_seconds}",
        f"K3S={'yes' if spec.k3s else 'no'}",
        f"ALLOWLIST={'yes' if spec.allowlist else 'no'}",
        f"LAYER={q(base64.b64encode(image.layer).decode())}",
        f"LAYER_DIGEST={q(image.layer_digest)}",
        f'curl_tls() {{ curl{tls} "$@"; }}',
        "probe_files() {  # probe_files DIR: the config and manifest for this machine's platform; sets config_digest",
        '  case "$(uname -m)" in',
    ]
    for pattern, architecture, variant in PROBE_PLATFORMS:
        probe = probe_image(architecture, variant)
        lines += [
            f"    {pattern})",
            f"      printf '%s' {q(probe.config.decode())} >\"$1/config\"",
            f"      printf '%s' {q(probe.manifest.decode())} >\"$1/manifest\"",
            f"      config_digest={q(probe.config_digest)} ;;",
        ]
    lines += ["    *) return 1 ;;", "  esac", "}"]
    return "\n".join(lines) + "\n" + _VERIFY_BODY.lstrip("\n")


def probe_platforms() -> Mapping[str, ProbeImage]:
    """The probe image for each platform the check knows, by platform string."""
    return {probe.platform: probe for probe in (probe_image(a, v) for _, a, v in PROBE_PLATFORMS)}

