"""The Caddy site steps: validated install (taking over an inline site), handover, grace-period expiry, removal."""

from __future__ import annotations

from renderers import shipped
from renderers.caddyfile import UPSTREAM_DIR, UPSTREAM_SLOTS
from renderers.shell import host_tool, q, script


def upstream_slots_init(upstream: str) -> list[str]:
    """Slot files that do not exist yet point at `upstream` (the first replica): a site that reads them may go live."""
    slot = f"{UPSTREAM_DIR}/$i"
    return [
        f"install -d -m 0755 {q(UPSTREAM_DIR)}",
        f"i=1; while [ \"$i\" -le {UPSTREAM_SLOTS} ]; do",
        f"  if [ ! -s \"{slot}\" ]; then",
        f"    printf '%s\\n' {q(upstream)} > \"{slot}.new\"; chmod 0644 \"{slot}.new\"; mv \"{slot}.new\" \"{slot}\"",
        "  fi",
        "  i=$((i + 1))",
        "done",
    ]


def caddy_site_install(caddyfile: str, site_file: str, domain: str, upstream: str) -> str:
    """Install the site from stdin in one validated reload; an inline site for the domain is taken over.

    The main Caddyfile gets the import line (and loses an inline site for the same domain); when it changes, the
    original is kept beside it as Caddyfile.YYYYMMDD-HHMMSS.bak. On a failed `caddy validate` both files are put back.
    The upstream slots the site reads exist first (missing ones point at `upstream`, the first replica).
    """
    import_line = f"import {site_file}"
    return script(
        f"site={q(site_file)}; main={q(caddyfile)}",
        "[ -f \"$main\" ] || { echo \"Caddyfile $main not found\" >&2; exit 1; }",
        "umask 027",
        'tmp=$(mktemp "$site.new.XXXXXX"); main_new=$(mktemp "$main.new.XXXXXX")',
        "trap 'rm -f \"$tmp\" \"$main_new\"' EXIT",
        'cat > "$tmp"',
        'chgrp caddy "$tmp" 2>/dev/null || true',
        'chmod 0640 "$tmp"',
        'backup="$main.$(date -u +%Y%m%d-%H%M%S).bak"',
        host_tool(shipped.CADDY_TAKEOVER, '"$main"', q(domain), q(import_line), '"$backup"', '"$main_new"'),
        *upstream_slots_init(upstream),
        'if cmp -s "$main_new" "$main" && [ -f "$site" ] && cmp -s "$tmp" "$site"; then echo "site unchanged"; exit 0; fi',
        'if [ -f "$site" ]; then cp -p "$site" "$site.bak"; fi',
        'mv "$tmp" "$site"',
        "main_changed=0",
        # cat, not mv: the main Caddyfile keeps its owner, mode and inode.
        # The backup is root-only: an inline site's basic_auth hashes were in it (and may still be live ones).
        'if ! cmp -s "$main_new" "$main"; then',
        '  main_changed=1; cp "$main" "$backup"; chmod 0600 "$backup"; cat "$main_new" > "$main"',
        "fi",
        'if ! out=$(caddy validate --adapter caddyfile --config "$main" 2>&1); then',
        '  if [ -f "$site.bak" ]; then mv "$site.bak" "$site"; else rm -f "$site"; fi',
        '  if [ "$main_changed" = 1 ]; then cat "$backup" > "$main"; rm -f "$backup"; fi',
        "  echo 'caddy validate rejected the new site; the previous configuration is still live:' >&2",
        "  printf '%s\\n' \"$out\" | grep -v '\"level\":\"info\"' >&2",
        "  exit 1",
        "fi",
        'rm -f "$site.bak"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; else systemctl enable --now caddy; fi",
        "echo 'site installed and Caddy reloaded'",
        'if [ "$main_changed" = 1 ]; then echo "the previous $main is kept as $backup"; fi',
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


HANDOVER_SEPARATOR = "# --- the settled site (what the handover step installs when it is no rotation) ---"
"""Between the two parts of the handover step's stdin: the site accepting both generations, the settled site."""


def handover_stdin(handover_site: str, settled_site: str) -> str:
    """The handover step's stdin: the site for a rotation (create) and the settled site (any other change)."""
    return f"{handover_site.rstrip()}\n{HANDOVER_SEPARATOR}\n{settled_site}"


def _with_stdin_part(part: int, step: str) -> str:
    """Run `step` with part 0 or 1 of this step's stdin (split at HANDOVER_SEPARATOR)."""
    keep = "found" if part else "!found"
    return script(
        "umask 077",
        "work=$(mktemp -d)",
        "trap 'rm -rf \"$work\"' EXIT",
        f"awk -v sep={q(HANDOVER_SEPARATOR)} '$0 == sep {{ found = 1; next }} {keep} {{ print }}' > \"$work/in\"",
        f"cat > \"$work/step\" <<'REGISTRY_SITE_STEP'\n{step}REGISTRY_SITE_STEP",
        'sh "$work/step" < "$work/in"',
    )


def caddy_site_handover(caddyfile: str, site_file: str, domain: str, upstream: str) -> str:
    """A rotation's first step: the site accepting the new and the previous credentials goes live."""
    return _with_stdin_part(0, caddy_site_install(caddyfile, site_file, domain, upstream))


def caddy_site_handover_settle(caddyfile: str, site_file: str, domain: str, upstream: str, deadline: int) -> str:
    """The handover step's update (no rotation): the settled site goes live now, before the clients' steps."""
    return _with_stdin_part(1, caddy_site_settle(caddyfile, site_file, domain, upstream, deadline))


def caddy_site_settle(caddyfile: str, site_file: str, domain: str, upstream: str, deadline: int) -> str:
    """The site step after the trust file and the Flux secret switched: refuse the previous credentials.

    stdin is the site to install, or (grace period) the site accepting both generations, GRACE_SEPARATOR and the
    site without the previous one. Before `deadline` (Unix time) the first goes live and a persistent timer
    installs the second at the deadline (and at boot, should the host be down then); from the deadline on, the
    second goes live at once. Any earlier timer is replaced or removed.
    """
    install = caddy_site_install(caddyfile, site_file, domain, upstream)
    if deadline <= 0:
        return script(*_expiry_disarm(), *install.splitlines()[1:])
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
    return script(
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
    """Drop the import line and the site file (and any grace-period timer), then reload, then the upstream slots the
    site read; other sites are untouched."""
    import_line = f"import {site_file}"
    return script(
        *_expiry_disarm(),
        f"site={q(site_file)}; main={q(caddyfile)}",
        f"if [ -f \"$main\" ]; then grep -vxF {q(import_line)} \"$main\" > \"$main.tmp\" || true; cat \"$main.tmp\" > \"$main\"; rm -f \"$main.tmp\"; fi",
        'rm -f "$site"',
        "if systemctl is-active --quiet caddy; then systemctl reload caddy; fi",
        # Moved aside first: the replicas' removal may run alongside (destroy), and a slot it writes then can only
        # fail (its folder is gone), never land in a folder being removed.
        f"if [ -d {q(UPSTREAM_DIR)} ]; then",
        f"  gone=$(mktemp -d {q(UPSTREAM_DIR + '.gone.')}XXXXXX)",
        f"  mv {q(UPSTREAM_DIR)} \"$gone/\"",
        "  rm -rf \"$gone\"",
        "fi",
    )
