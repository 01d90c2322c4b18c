"""The registry's Caddy site: TLS, basic auth, the pull-only rule, the maintenance answer and the upstream slots."""

from __future__ import annotations

import base64
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from settings.model import MAX_REPLICAS

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")
MAINTENANCE_FLAG = "/run/registry/read-only"
"""Present on the host while a maintenance window holds the registry read-only; Caddy then refuses writes clearly."""
MAINTENANCE_RETRY_AFTER = 120
# Long enough for the registry container to drain and restart (maintenance window, image change).
PROXY_TRY_DURATION = "30s"
PROXY_TRY_INTERVAL = "250ms"
UPSTREAM_DIR = "/var/lib/registry-upstreams"
"""Caddy's upstream slots: files 1..UPSTREAM_SLOTS, each one replica's host:port, read at every request. The site
names the slots, never the replicas, so a change of replicas is a file write and never a Caddy reload (a reload
drops a request that arrives on a connection the outgoing configuration had just accepted)."""
UPSTREAM_SLOTS = MAX_REPLICAS
"""One slot per possible replica; with fewer replicas they take turns in the spare slots."""
HOOK_DIR = "/etc/caddy/flux-hook"
"""The relay's two files, read at every request (a new token or address needs no reload): `path`, the Receiver's
secret webhook path (root:caddy 0640), and `upstream`, host:port of the notification-controller's receiver."""
FAIL_DURATION = "2s"
"""A slot whose replica refused a connection is skipped this long (it is retried on another slot at once)."""


@dataclass(frozen=True)
class SiteSpec:
    """Everything the Caddy site depends on."""

    domain: str
    acme_email: str
    push_user: str
    push_hash: str
    pull_user: str
    pull_hash: str
    allowlist: Sequence[str] = ()
    acme_ca_url: str | None = None
    acme_ca_root: str | None = None
    previous_push_hash: str = ""
    """During a credential handover: the push user's previous bcrypt hash, still accepted; empty otherwise."""
    previous_pull_hash: str = ""
    """The same for the pull user."""
    upstream_dir: str = UPSTREAM_DIR
    """Where the upstream slot files are."""
    hook_port: int | None = None
    """Push-to-deploy: the loopback port of the relay from the registry's notifications to Flux's Receiver."""

    @property
    def handover(self) -> bool:
        return bool(self.previous_push_hash or self.previous_pull_hash)


def _caddy_token(value: str) -> str:
    """Quote a Caddyfile token when it holds anything but safe characters."""
    if value and all(c.isalnum() or c in "._-/:@$*+=" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_class(lo: int, hi: int) -> str:
    return "[" + "".join(_B64[i] for i in range(lo, hi + 1)) + "]"  # "+" and "/" are literal inside a class


def basic_prefix_regexp(user: str) -> str:
    """A regexp every `Basic base64(user:password)` credential matches whatever the password, and no other user's does.

    The bytes of "user:" that fill whole base64 groups give fixed characters; a partial last group gives one
    character class spanning the password's bits. No backslashes: it goes into a quoted Caddyfile token.
    """
    raw = (user + ":").encode()
    full = len(raw) // 3 * 3
    fixed = base64.b64encode(raw[:full]).decode()
    rest = raw[full:]
    tail = ""
    if len(rest) == 1:  # 6 bits fixed, then 2 fixed + 4 free
        lo = (rest[0] & 3) << 4
        tail = _B64[rest[0] >> 2] + _b64_class(lo, lo + 15)
    elif len(rest) == 2:  # 6 + 6 bits fixed, then 4 fixed + 2 free
        b0, b1 = rest
        lo = (b1 & 15) << 2
        tail = _B64[b0 >> 2] + _B64[((b0 & 3) << 4) | (b1 >> 4)] + _b64_class(lo, lo + 3)
    return fixed.replace("+", "[+]") + tail


def render_caddyfile(spec: SiteSpec) -> str:
    """The registry's Caddy site: TLS via ACME, basic auth on /v2/, pull-only user limited to GET/HEAD."""
    tls = [f"\ttls {_caddy_token(spec.acme_email)}"]
    tls_options = []
    if spec.acme_ca_url:
        tls_options.append(f"\t\tca {_caddy_token(spec.acme_ca_url)}")
    if spec.acme_ca_root:
        tls_options.append(f"\t\tca_root {_caddy_token(spec.acme_ca_root)}")
    if tls_options:
        tls = [tls[0] + " {", *tls_options, "\t}"]
    lines = [
        "# Managed by the registry Pulumi program; edits are overwritten.",
        f"{spec.domain} {{",
        *tls,
        "\tencode zstd gzip",
        # Set on every answer, Caddy's own 401/403/503 included; the registry's copy is dropped below
        # so proxied answers carry it exactly once.
        f"\theader {API_VERSION_HEADER[0]} {API_VERSION_HEADER[1]}",
    ]
    known_users = "|".join(basic_prefix_regexp(user) for user in (spec.push_user, spec.pull_user))
    body: list[str] = []
    if spec.allowlist:
        body += [
            f"\t@outside not remote_ip {' '.join(spec.allowlist)}",
            '\trespond @outside "forbidden" 403',
        ]
    body += [
        "\troute /v2* {",
        # A credential for a user name the site does not know gets its 401 at once: basic_auth would check it
        # against a built-in cost-14 bcrypt hash (about 0.85 s of CPU each), an easy flood.
        "\t\t@unknown_user {",
        "\t\t\theader Authorization *",
        f'\t\t\tnot header_regexp Authorization "^(?i:basic) ({known_users})"',
        "\t\t}",
        '\t\theader @unknown_user WWW-Authenticate "Basic realm=\\"restricted\\""',
        "\t\trespond @unknown_user 401",
        *_basic_auth(((spec.push_user, spec.push_hash), (spec.pull_user, spec.pull_hash)), "\t\t"),
        *_authenticated(spec, "\t\t"),
        "\t}",
        *_proxy(spec, "\t"),
    ]
    # One ordered route: directives run as written, so the allowlist refuses outsiders before any
    # password is checked (Caddy's default order would put basic_auth first).
    lines += ["\troute {", *("\t" + line for line in body), "\t}"]
    if spec.handover:
        lines += _handover(spec)
    lines.append("}")
    if spec.hook_port:
        lines += _hook_relay(spec.hook_port)
    return "\n".join(lines) + "\n"


def _hook_relay(port: int) -> list[str]:
    """The registry's notifications, on loopback only, forwarded to Flux's Receiver under its secret path. The site
    names the files, never the path: Caddy's config (and its admin API) hold only the placeholders. An error is
    answered by handle_errors, so Caddy logs it at debug level only (its error log would show the rewritten path)."""
    return [
        "",
        f"http://127.0.0.1:{port} {{",
        "\tbind 127.0.0.1",
        f"\trewrite * {{file.{HOOK_DIR}/path}}",
        # Through a variable, as the upstream slots: a placeholder straight in reverse_proxy gets a port appended.
        f"\tvars flux_receiver {{file.{HOOK_DIR}/upstream}}",
        "\treverse_proxy {vars.flux_receiver}",
        "\thandle_errors {",
        '\t\trespond "receiver unavailable" 502',
        "\t}",
        "}",
    ]


def _basic_auth(accounts: Sequence[tuple[str, str]], indent: str) -> list[str]:
    return [f"{indent}basic_auth {{", *(f"{indent}\t{user} {hashed}" for user, hashed in accounts if hashed), f"{indent}}}"]


def _authenticated(spec: SiteSpec, indent: str) -> list[str]:
    """What an authenticated request meets before the proxy: the pull-only rule and the maintenance answer."""
    lines = [
        "@pull_write {",
        f"\tvars {{http.auth.user.id}} {spec.pull_user}",
        "\tnot method GET HEAD",
        "}",
        'respond @pull_write "pull-only credential: read access only" 403',
        # Distribution's own read-only answer is a bare "405 Method not allowed"; this one says why,
        # in the registry's error format, as 503 + Retry-After (which clients treat as retryable).
        "@maintenance {",
        "\tnot method GET HEAD",
        "\tfile {",
        f"\t\troot {posixpath.dirname(MAINTENANCE_FLAG)}",
        f"\t\ttry_files /{posixpath.basename(MAINTENANCE_FLAG)}",
        "\t}",
        "}",
        'header @maintenance Content-Type "application/json; charset=utf-8"',
        f"header @maintenance Retry-After {MAINTENANCE_RETRY_AFTER}",
        f"respond @maintenance `{maintenance_error()}` 503",
    ]
    return [indent + line for line in lines]


def _proxy(spec: SiteSpec, indent: str) -> list[str]:
    # Requests that arrive while the container restarts wait for it instead of failing with 502;
    # a connection refused is retried for every method, a dropped one only for GET and HEAD.
    slots = range(1, UPSTREAM_SLOTS + 1)
    lines = [
        # The replicas' addresses come from the slot files at every request (see UPSTREAM_DIR): the same site serves
        # one replica or eight, and the container step moves the slots off a replica before it stops it.
        "vars {",
        *(f"\t{_slot_var(i)} {{file.{posixpath.join(spec.upstream_dir, str(i))}}}" for i in slots),
        "}",
        f"reverse_proxy {' '.join(f'{{vars.{_slot_var(i)}}}' for i in slots)} {{",
        f"\theader_down -{API_VERSION_HEADER[0]}",
        "\tlb_policy round_robin",
        f"\tlb_try_duration {PROXY_TRY_DURATION}",
        f"\tlb_try_interval {PROXY_TRY_INTERVAL}",
        "\tlb_retry_match {",
        "\t\tmethod GET HEAD",
        "\t}",
        f"\tfail_duration {FAIL_DURATION}",
        "}",
    ]
    return [indent + line for line in lines]


def _slot_var(slot: int) -> str:
    return f"registry_upstream_{slot}"


def _handover(spec: SiteSpec) -> list[str]:
    """A credential handover: what the current hashes refused (basic_auth's 401 error) meets the previous ones.

    Caddy's basic_auth holds one hash per user name, so the previous generation gets its own basic_auth in the
    site's error route; a credential neither accepts gets the second basic_auth's 401. Unknown user names and
    outsiders were answered before (a response, not an error) and never reach it.
    """
    previous = ((spec.push_user, spec.previous_push_hash), (spec.pull_user, spec.previous_pull_hash))
    body = [
        "\tencode zstd gzip",
        "\troute /v2* {",
        *_basic_auth(previous, "\t\t"),
        # basic_auth asked for credentials when it refused the current ones; this answer is not a refusal.
        "\t\theader -WWW-Authenticate",
        *_authenticated(spec, "\t\t"),
        *_proxy(spec, "\t\t"),
        "\t}",
    ]
    return [
        "\t# Credential handover: the previous passwords are still accepted (see the README, Rotating credentials).",
        "\thandle_errors 401 {",
        *("\t" + line for line in body),
        "\t}",
    ]


def maintenance_error() -> str:
    """The registry-style error body a write gets during a maintenance window."""
    message = "registry is read-only for maintenance (garbage collection, backup or restore); retry in a few minutes"
    return json.dumps({"errors": [{"code": "UNAVAILABLE", "message": message}]}, separators=(",", ":"))
