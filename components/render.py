"""Pure renderers for every file that lands on the host or in the cluster.

Plain values in, text out; nothing here knows about Pulumi.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from components.config import MAX_REPLICAS
from components.host_tools import registries_merge

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
    return "\n".join(lines) + "\n"


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


def basic_auth_value(username: str, password: str) -> str:
    """base64(user:password), the `auth` field every Docker-config reader understands."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def dockerconfigjson(registry: str, username: str, password: str) -> str:
    """A Docker config.json holding one credential (username, password and auth)."""
    entry = {"username": username, "password": password, "auth": basic_auth_value(username, password)}
    return json.dumps({"auths": {registry: entry}}, indent=2, sort_keys=True) + "\n"


def registries_entries(registry: str, username: str, password: str, ca_file: str | None = None) -> dict[str, dict]:
    """The entries of k3s's registries.yaml the program owns: its registry under `configs`, one credential.

    No mirror entry: for a registry served under its own name, `configs` alone is what k3s needs.
    """
    host_config: dict[str, object] = {"auth": {"username": username, "password": password}}
    if ca_file:
        host_config["tls"] = {"ca_file": ca_file}
    return {"configs": {registry: host_config}}


def render_registries_owned(registry: str, username: str, password: str, ca_file: str | None = None) -> str:
    """What the trust file step sends on stdin: the owned entries as JSON, merged into the host's file there."""
    return json.dumps(registries_entries(registry, username, password, ca_file), sort_keys=True) + "\n"


def render_registries_yaml(registry: str, username: str, password: str, ca_file: str | None = None) -> str:
    """registries.yaml as the program writes it where there was none (the host's merge tool renders the same)."""
    return registries_merge.render(registries_entries(registry, username, password, ca_file))


S3_CA_IN_CONTAINER = "/etc/ssl/registry-s3-ca.pem"
"""Where a private S3 endpoint's CA is mounted in the registry container (the only roots it then trusts)."""


@dataclass(frozen=True)
class StorageSpec:
    """Where the registry keeps its data: the data directory (filesystem) or an S3-compatible bucket."""

    kind: str = "filesystem"
    endpoint: str | None = None
    region: str = "us-east-1"
    bucket: str = ""
    root_directory: str = ""
    force_path_style: bool = True
    ca_file: str | None = None
    """Host path of the endpoint's CA (mounted at S3_CA_IN_CONTAINER)."""

    @property
    def s3(self) -> bool:
        return self.kind == "s3"

    def describe(self) -> str:
        """One line for logs and status: no secret."""
        if not self.s3:
            return "filesystem"
        where = self.endpoint or "AWS S3"
        return f"S3 bucket {self.bucket}{self.root_directory} at {where} (region {self.region})"


def distribution_env(distribution: int) -> dict[str, str]:
    """What Distribution 3's image needs set: its config (config-dev.yml) logs at debug level; no trace export."""
    if distribution < 3:
        return {}
    return {"REGISTRY_LOG_LEVEL": "info", "OTEL_TRACES_EXPORTER": "none"}


def render_registry_env(
    http_secret: str,
    container_root: str = "/var/lib/registry",
    storage: StorageSpec | None = None,
    distribution: int = 2,
    s3_access_key: str = "",
    s3_secret_key: str = "",
) -> str:
    """The registry container's --env-file: storage, deletion, a stable HTTP secret (and the S3 credential).

    With S3, REGISTRY_STORAGE=s3 replaces the image's whole `storage` section (the parser applies it before
    every REGISTRY_STORAGE_* key), so the cache is set again; redirects are off: clients reach the registry
    through Caddy only, never the store.
    """
    storage = storage or StorageSpec()
    env: dict[str, str] = {}
    if storage.s3:
        env["REGISTRY_STORAGE"] = "s3"
        env["REGISTRY_STORAGE_S3_REGION"] = storage.region
        env["REGISTRY_STORAGE_S3_BUCKET"] = storage.bucket
        if storage.endpoint:
            env["REGISTRY_STORAGE_S3_REGIONENDPOINT"] = storage.endpoint.rstrip("/")
            env["REGISTRY_STORAGE_S3_SECURE"] = "true" if storage.endpoint.startswith("https://") else "false"
        env["REGISTRY_STORAGE_S3_FORCEPATHSTYLE"] = "true" if storage.force_path_style else "false"
        if storage.root_directory:
            env["REGISTRY_STORAGE_S3_ROOTDIRECTORY"] = storage.root_directory
        env["REGISTRY_STORAGE_S3_ACCESSKEY"] = s3_access_key
        env["REGISTRY_STORAGE_S3_SECRETKEY"] = s3_secret_key
        env["REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR"] = "inmemory"
        env["REGISTRY_STORAGE_REDIRECT_DISABLE"] = "true"
        if storage.ca_file:
            env["SSL_CERT_FILE"] = S3_CA_IN_CONTAINER
    else:
        env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = container_root
    env["REGISTRY_STORAGE_DELETE_ENABLED"] = "true"
    env.update(distribution_env(distribution))
    env["REGISTRY_HTTP_SECRET"] = http_secret
    bad = [k for k, v in env.items() if "\n" in v or "\r" in v]
    if bad:
        raise ValueError(f"env file values cannot hold a newline: {bad}")
    return "".join(f"{k}={v}\n" for k, v in env.items())


def sha256(text: str) -> str:
    """Hex digest of a rendered file, used to trigger dependent steps only when content changes."""
    return hashlib.sha256(text.encode()).hexdigest()
