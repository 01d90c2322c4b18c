"""Pure renderers for the shell scripts the program runs on the host.

Every value is quoted through `q`; no script ever contains a secret (secrets arrive on stdin).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping

q = shlex.quote

MIN_CADDY = (2, 8)
MAINTENANCE_LOCK = "/run/lock/registry-maintenance.lock"
"""Held by every step that stops or recreates the registry container (deploys, GC, backups, restore)."""
DRAIN_ENV = {"REGISTRY_HTTP_DRAINTIMEOUT": "20s"}
"""On SIGTERM the registry finishes requests in flight (a long blob download) before it exits."""
STOP_TIMEOUT = 25


def as_root(script: str, prefix: str) -> str:
    """The command string that runs `script` with POSIX sh as root (prefix is '' or 'sudo -n ')."""
    return f"{prefix}sh -c {q(script)}"


def _script(*lines: str) -> str:
    return "\n".join(["set -eu", *lines]) + "\n"


def preflight(require_k3s: bool, k3s_service: str) -> str:
    """Fail with one readable line per problem before anything is changed on the host."""
    lines = [
        "problems=''",
        "fail() { problems=\"${problems}preflight: $1\n\"; }",
        "command -v curl >/dev/null 2>&1 || fail 'curl is not installed (needed to check the registry answers)'",
        "if ! command -v docker >/dev/null 2>&1; then fail 'Docker is not installed (install docker.io or docker-ce)'",
        "elif ! docker info >/dev/null 2>&1; then fail 'Docker is installed but the engine is not running'; fi",
        "if ! command -v caddy >/dev/null 2>&1; then fail 'Caddy is not installed (2.8 or later is required)'",
        "else",
        "  v=$(caddy version | sed -n 's/^v\\{0,1\\}\\([0-9][0-9]*\\)\\.\\([0-9][0-9]*\\).*/\\1 \\2/p' | head -n 1)",
        "  major=${v% *}; minor=${v#* }",
        f"  if [ -z \"$v\" ] || [ \"$major\" -lt {MIN_CADDY[0]} ] || {{ [ \"$major\" -eq {MIN_CADDY[0]} ] && [ \"$minor\" -lt {MIN_CADDY[1]} ]; }}; then",
        f"    fail \"Caddy $(caddy version | head -n 1) is too old: {MIN_CADDY[0]}.{MIN_CADDY[1]} or later is required (basic_auth)\"",
        "  fi",
        "  systemctl cat caddy.service >/dev/null 2>&1 || fail 'Caddy is installed but caddy.service is missing (install Caddy from its Debian/Ubuntu package)'",
        "fi",
    ]
    if require_k3s:
        lines.append(
            f"systemctl cat {q(k3s_service + '.service')} >/dev/null 2>&1 || "
            f"fail {q(f'k3s is not installed: systemd unit {k3s_service}.service not found (set k3sTrust=false to skip the trust file)')}"
        )
    lines += [
        "holders=$(ss -Hltnp 'sport = :80 or sport = :443' 2>/dev/null | grep 'users:((' | grep -v 'users:((\"caddy\"' || true)",
        "[ -z \"$holders\" ] || fail \"ports 80/443 are held by something other than Caddy: $holders\"",
        "if [ -n \"$problems\" ]; then printf '%s' \"$problems\" >&2; exit 1; fi",
        "echo 'preflight: ok'",
    ]
    return _script(*lines)


def data_dir(path: str) -> str:
    """Create the registry's data directory (root-owned: registry:2 runs as root); never remove it."""
    return _script(f"install -d -m 0750 -o root -g root {q(path)}", f"echo {q(path)}")


def registry_docker_run(
    name: str, image: str, port: int, data_dir: str, env_file: str, env: Mapping[str, str] | None = None
) -> str:
    """The one `docker run` line for the registry container; `env` adds settings (the maintenance window's)."""
    extra = "".join(f"-e {q(f'{key}={value}')} " for key, value in (env or {}).items())
    return (
        f"docker run -d --name {q(name)} --restart unless-stopped -p {q(f'127.0.0.1:{port}:5000')} "
        f"-v {q(f'{data_dir}:/var/lib/registry')} --env-file {q(env_file)} {extra}{q(image)}"
    )


def registry_run(name: str, image: str, port: int, data_dir: str, env_file: str) -> str:
    """Write the env file from stdin (0600), then (re)create the container and wait for /v2/."""
    return _script(
        "umask 077",
        f"install -d -m 0700 {q(posixpath.dirname(env_file))}",
        f"cat > {q(env_file + '.new')}",
        f"mv {q(env_file + '.new')} {q(env_file)}",
        # Never swap the container under a GC or backup window: wait for it to end.
        f"exec 9>{q(MAINTENANCE_LOCK)}",
        "flock -w 900 9 || { echo 'a registry maintenance window (GC, backup or restore) still runs after 15 minutes; retry later' >&2; exit 1; }",
        f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
        f"{registry_docker_run(name, image, port, data_dir, env_file, DRAIN_ENV)} >/dev/null",
        "i=0",
        f"until curl -fsS -o /dev/null {q(f'http://127.0.0.1:{port}/v2/')}; do",
        "  i=$((i + 1))",
        f"  if [ \"$i\" -ge 60 ]; then echo 'registry did not answer on 127.0.0.1:{port}/v2/ within 30 s' >&2; docker logs --tail 20 {q(name)} >&2; exit 1; fi",
        "  sleep 0.5",
        "done",
        f"echo {q(f'127.0.0.1:{port}')}",
    )


def registry_remove(name: str) -> str:
    """Remove the container only; the data directory stays."""
    return _script(f"docker rm -f {q(name)} >/dev/null 2>&1 || true")


def caddy_site_install(caddyfile: str, site_file: str) -> str:
    """Install the site from stdin: validate the whole config first, keep the old file on failure, reload gracefully."""
    import_line = f"import {site_file}"
    return _script(
        f"site={q(site_file)}; main={q(caddyfile)}",
        "[ -f \"$main\" ] || { echo \"Caddyfile $main not found\" >&2; exit 1; }",
        "umask 027",
        'tmp=$(mktemp "$site.new.XXXXXX")',
        "trap 'rm -f \"$tmp\"' EXIT",
        'cat > "$tmp"',
        'chgrp caddy "$tmp" 2>/dev/null || true',
        'chmod 0640 "$tmp"',
        f"if grep -qxF {q(import_line)} \"$main\"; then added=0; else added=1; fi",
        'if [ "$added" = 0 ] && [ -f "$site" ] && cmp -s "$tmp" "$site"; then echo "site unchanged"; exit 0; fi',
        'cp -p "$main" "$main.bak"',
        '[ -f "$site" ] && cp -p "$site" "$site.bak"',
        'mv "$tmp" "$site"',
        f"[ \"$added\" = 0 ] || printf '\\n# Added by the registry Pulumi program.\\n%s\\n' {q(import_line)} >> \"$main\"",
        'if ! out=$(caddy validate --adapter caddyfile --config "$main" 2>&1); then',
        '  if [ -f "$site.bak" ]; then mv "$site.bak" "$site"; else rm -f "$site"; fi',
        '  cp -p "$main.bak" "$main"',
        "  echo 'caddy validate rejected the new site; the previous configuration is still live:' >&2",
        "  printf '%s\\n' \"$out\" | grep -v '\"level\":\"info\"' >&2",
        "  exit 1",
        "fi",
        'rm -f "$site.bak" "$main.bak"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; else systemctl enable --now caddy; fi",
        "echo 'site installed and Caddy reloaded'",
    )


GRACE_SEPARATOR = "# --- the site once the grace period is over ---"
"""Between the two sites a grace-period step receives on stdin: the one to install now, the one after expiry."""
EXPIRY_UNIT = "registry-credential-expiry"
EXPIRY_DIR = "/var/lib/registry-credential-expiry"
"""Root-only: the site to install when the grace period ends, and the scripts the expiry unit runs."""


def _expiry_disarm() -> list[str]:
    """Stop and remove the expiry timer and its staged site, if any (quiet when there is none)."""
    unit_dir = "/etc/systemd/system"
    return [
        f"if [ -e {q(f'{unit_dir}/{EXPIRY_UNIT}.timer')} ] || [ -e {q(EXPIRY_DIR)} ]; then",
        f"  systemctl disable --now {q(EXPIRY_UNIT + '.timer')} {q(EXPIRY_UNIT + '.service')} >/dev/null 2>&1 || true",
        f"  rm -f {q(f'{unit_dir}/{EXPIRY_UNIT}.timer')} {q(f'{unit_dir}/{EXPIRY_UNIT}.service')}",
        f"  rm -rf {q(EXPIRY_DIR)}",
        "  systemctl daemon-reload",
        "  echo 'grace period: expiry timer removed'",
        "fi",
    ]


def caddy_site_handover_kept() -> str:
    """The handover step's update: a change that is not a rotation hands nothing over (the site step installs it)."""
    return _script("echo 'no rotation: nothing to hand over'")


def caddy_site_settle(caddyfile: str, site_file: str, deadline: int) -> str:
    """The site step after the trust file and the Flux secret switched: refuse the previous credentials.

    stdin is the site to install, or (grace period) the site accepting both generations, GRACE_SEPARATOR and the
    site without the previous one. Before `deadline` (Unix time) the first goes live and a persistent timer
    installs the second at the deadline (and at boot, should the host be down then); from the deadline on, the
    second goes live at once. Any earlier timer is replaced or removed.
    """
    install = caddy_site_install(caddyfile, site_file)
    if deadline <= 0:
        return _script(*_expiry_disarm(), *install.splitlines()[1:])
    when = f"$(date -u -d @{deadline} '+%Y-%m-%d %H:%M:%S UTC')"
    timer = "\n".join([
        "[Unit]",
        "Description=End of the registry credential grace period: refuse the previous passwords",
        "[Timer]",
        f"OnCalendar={when}",
        "AccuracySec=1s",
        "Persistent=true",
        "[Install]",
        "WantedBy=timers.target",
    ])
    service = "\n".join([
        "[Unit]",
        "Description=Refuse the registry's previous credentials once the grace period is over",
        "After=caddy.service",
        f"ConditionPathExists={EXPIRY_DIR}/site",
        "[Service]",
        "Type=oneshot",
        f"ExecStart=/bin/sh {EXPIRY_DIR}/expire",
        "[Install]",
        "WantedBy=multi-user.target",
    ])
    expire = "\n".join([
        "set -eu",
        f"[ -f {EXPIRY_DIR}/site ] || exit 0",
        f"if [ \"$(date +%s)\" -lt {deadline} ]; then echo 'grace period not over yet'; exit 0; fi",
        f"sh {EXPIRY_DIR}/install < {EXPIRY_DIR}/site",
        f"rm -f {EXPIRY_DIR}/site",
        "echo 'grace period over: previous credentials refused'",
    ])
    return _script(
        "umask 077",
        'work=$(mktemp -d)',
        "trap 'rm -rf \"$work\"' EXIT",
        'cat > "$work/in"',
        f"cat > \"$work/install\" <<'REGISTRY_SITE_INSTALL'\n{install}REGISTRY_SITE_INSTALL",
        f"sep={q(GRACE_SEPARATOR)}",
        'if grep -qxF "$sep" "$work/in"; then',
        '  awk -v sep="$sep" \'$0 == sep { exit } { print }\' "$work/in" > "$work/now"',
        '  awk -v sep="$sep" \'found { print } $0 == sep { found = 1 }\' "$work/in" > "$work/later"',
        "else",
        '  cp "$work/in" "$work/later"; : > "$work/now"',
        "fi",
        f"if [ -s \"$work/now\" ] && [ \"$(date +%s)\" -lt {deadline} ]; then",
        '  sh "$work/install" < "$work/now"',
        f"  install -d -m 0700 {EXPIRY_DIR}",
        f'  cp "$work/install" {EXPIRY_DIR}/install',
        f'  cp "$work/later" {EXPIRY_DIR}/site',
        f"  cat > {EXPIRY_DIR}/expire <<'REGISTRY_EXPIRE'\n{expire}\nREGISTRY_EXPIRE",
        f"  printf '%s\\n' \"{timer}\" > /etc/systemd/system/{EXPIRY_UNIT}.timer",
        f"  cat > /etc/systemd/system/{EXPIRY_UNIT}.service <<'REGISTRY_EXPIRY_UNIT'\n{service}\nREGISTRY_EXPIRY_UNIT",
        f"  chmod 0644 /etc/systemd/system/{EXPIRY_UNIT}.timer /etc/systemd/system/{EXPIRY_UNIT}.service",
        "  systemctl daemon-reload",
        f"  systemctl enable --quiet {EXPIRY_UNIT}.service",
        f"  systemctl enable --quiet {EXPIRY_UNIT}.timer",
        f"  systemctl restart {EXPIRY_UNIT}.timer",
        f"  echo \"grace period: previous credentials accepted until {when}\"",
        "  exit 0",
        "fi",
        *_expiry_disarm(),
        'sh "$work/install" < "$work/later"',
    )


def caddy_site_remove(caddyfile: str, site_file: str) -> str:
    """Drop the import line and the site file (and any grace-period timer), then reload; other sites are untouched."""
    import_line = f"import {site_file}"
    return _script(
        *_expiry_disarm(),
        f"site={q(site_file)}; main={q(caddyfile)}",
        f"if [ -f \"$main\" ]; then grep -vxF {q(import_line)} \"$main\" > \"$main.tmp\" || true; cat \"$main.tmp\" > \"$main\"; rm -f \"$main.tmp\"; fi",
        'rm -f "$site"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; fi",
    )


def trust_file_write(path: str) -> str:
    """Write registries.yaml from stdin as root:root 0600, replacing it only when the content differs."""
    return _script(
        "umask 077",
        f"f={q(path)}",
        'install -d -m 0755 "$(dirname "$f")"',
        'tmp=$(mktemp "$f.new.XXXXXX")',
        "trap 'rm -f \"$tmp\"' EXIT",
        'cat > "$tmp"',
        'chown root:root "$tmp"; chmod 0600 "$tmp"',
        'if [ -f "$f" ] && cmp -s "$tmp" "$f"; then echo unchanged; else mv "$tmp" "$f"; echo written; fi',
    )


def trust_file_remove(path: str) -> str:
    return _script(f"rm -f {q(path)}")


def k3s_restart(service: str) -> str:
    """Restart k3s if it runs (a stopped k3s reads the file when it starts)."""
    return _script(f"systemctl try-restart {q(service + '.service')}", f"echo {q(f'{service} restarted if it was running')}")

