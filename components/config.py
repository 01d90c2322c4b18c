"""One validated settings object for the whole stack, built from project config.

Every rule runs before any resource is registered; all problems are reported at once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

FLUX_API_VERSIONS = ("image.toolkit.fluxcd.io/v1", "image.toolkit.fluxcd.io/v1beta2")
SEMVER_TAG = "v?[0-9]+[.][0-9]+([.][0-9]+)?([-+][0-9A-Za-z.+-]+)?"
"""Semver-looking tags (1.2, v1.2.3, 2.0.0-rc.1+build.5); the dot keeps every hexadecimal commit tag out."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?:{_LABEL}\.)+[a-z][a-z0-9-]{{0,61}}[a-z0-9]$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?P<domain>[^@\s]+)$")
_USER_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_IMAGE_RE = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_REPO_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9@._-]{1,200}$")
_DURATION_RE = re.compile(r"^(?:[0-9]+(?:ms|s|m|h))+$")
_ROTATION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST_KEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}$")
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
# systemd OnCalendar, loosely: the characters its grammar uses, at least one letter, digit or '*'.
# The host checks the exact grammar with `systemd-analyze calendar` before installing a timer.
_CALENDAR_RE = re.compile(r"^(?=.*[A-Za-z0-9*])[A-Za-z0-9*,./:~ +-]{1,100}$")


class ConfigError(ValueError):
    """Raised with every invalid setting listed, one per line."""


@dataclass(frozen=True)
class Settings:
    """The validated stack settings; field names mirror the config keys (snake_case)."""

    host: str
    """Address of the server (DNS name or IP) reached over SSH."""
    ssh_port: int = 22
    """SSH port."""
    ssh_user: str = "ubuntu"
    """SSH login; privileged steps go through `sudo -n` unless this is root."""
    ssh_private_key: str | None = field(default=None, repr=False)
    """Private key (secret config); the ssh-agent is used when unset."""
    ssh_host_key: str | None = None
    """Pinned public host key line (`ssh-ed25519 AAAA...`); unchecked when unset."""
    domain: str = "registry.lvs.me.uk"
    """Public DNS name the registry is served on."""
    acme_email: str = "letsencrypt@lvs.me.uk"
    """ACME account email."""
    acme_ca_url: str | None = None
    """ACME directory URL (Let's Encrypt staging, or a test CA); Caddy's default when unset."""
    acme_ca_root: str | None = None
    """Path on the host of the PEM root that signs the ACME server's own TLS certificate."""
    push_user: str = "robot_user"
    """Push principal (CI)."""
    pull_user: str = "k3s_pull"
    """Pull-only principal (k3s and Flux)."""
    password_length: int = 32
    """Length of the generated passwords."""
    credential_rotation: str = "1"
    """Change this value to rotate both passwords."""
    existing_push_password: str | None = field(default=None, repr=False)
    """CI's existing push password (secret config), kept through a takeover until the next rotation."""
    credential_grace_period: int = 0
    """Seconds the previous passwords keep working after a rotation; 0 refuses them at the end of the same `up`."""
    registry_image: str = "registry:2"
    """Registry image, pinnable by digest."""
    registry_port: int = 5000
    """Loopback port the registry listens on (the first replica's; replica i listens on port + i - 1)."""
    registry_major_version: int | None = None
    """Distribution 2 or 3 (config paths and defaults differ); None: from the image's tag (3.x tags: 3, else 2)."""
    registry_replicas: int = 1
    """How many registry containers share the storage and the HTTP secret (Caddy load-balances across them)."""
    storage: str = "filesystem"
    """filesystem (dataDir) or s3 (an S3-compatible bucket)."""
    s3_endpoint: str | None = None
    """URL of an S3-compatible server (http(s)://host[:port]); AWS S3 itself when unset."""
    s3_region: str = "us-east-1"
    """Region of the bucket (any name an S3-compatible server accepts)."""
    s3_bucket: str | None = None
    """Bucket holding the registry's data (it must exist)."""
    s3_root_directory: str = ""
    """Prefix inside the bucket ("" for the bucket's root)."""
    s3_force_path_style: bool = True
    """Path-style addressing (endpoint/bucket/key) instead of virtual-hosted (bucket.endpoint/key)."""
    s3_access_key: str | None = field(default=None, repr=False)
    """Access key id (secret config)."""
    s3_secret_key: str | None = field(default=None, repr=False)
    """Secret access key (secret config)."""
    s3_ca_file: str | None = None
    """Path on the host of a PEM CA that signs a private endpoint's TLS certificate."""
    data_dir: str = "/srv/data/registry"
    """Host directory holding the registry's data; never removed."""
    allowlist: tuple[str, ...] = ()
    """CIDRs allowed to reach the site; everyone when empty."""
    caddyfile: str = "/etc/caddy/Caddyfile"
    """The host's main Caddyfile; the program only adds one import line to it."""
    caddy_site_file: str = "/etc/caddy/registry.caddy"
    """The site file the program owns."""
    k3s_trust: bool = True
    """Write the k3s trust file and restart k3s when it changes."""
    k3s_service: str = "k3s"
    """k3s systemd unit: k3s on servers, k3s-agent on agents."""
    k3s_registries_file: str = "/etc/rancher/k3s/registries.yaml"
    """Path of k3s's registries.yaml."""
    registry_ca_file: str | None = None
    """Path on the host of a CA k3s should trust for the registry (private or test CAs)."""
    flux: bool = True
    """Create the Flux pull secret (and image repositories)."""
    kubeconfig: str | None = field(default=None, repr=False)
    """Kubeconfig contents (secret config); the ambient kubeconfig when unset."""
    flux_namespace: str = "flux-system"
    """Namespace of the Flux secret."""
    flux_secret_name: str = "registry-credentials"
    """Name of the Flux secret."""
    flux_api_version: str = "image.toolkit.fluxcd.io/v1"
    """ImageRepository API version (v1 from Flux 2.7, v1beta2 before)."""
    flux_images: tuple[str, ...] = ("ruby-demo-app",)
    """Repositories to create Flux ImageRepositories for."""
    flux_interval: str = "5m"
    """How often Flux scans each repository."""
    verify: bool = True
    """Check the live site through its public name after every change that matters (and the k3s pull path)."""
    gc_schedule: str = "Sun *-*-* 03:00:00"
    """systemd OnCalendar of the garbage-collection timer; empty disables the timer."""
    gc_delete_untagged: bool = False
    """Pass --delete-untagged to garbage-collect (in 2.8 it also deletes the children of multi-arch images)."""
    backup_schedule: str = "*-*-* 02:30:00"
    """systemd OnCalendar of the backup timer; empty disables the timer."""
    backup_dir: str = "/srv/backups/registry"
    """Host directory the backup archives go to (root-only); never removed."""
    backup_keep: int = 7
    """How many backup archives to keep; older ones are deleted after a successful backup."""
    retention: bool = False
    """Delete old tags inside the GC window (before garbage-collect), following the retention rules."""
    retention_rules: tuple[tuple[str, int], ...] = (("*", 10),)
    """(repository glob, N): in matching repositories keep the newest N tags; the first matching rule wins."""
    retention_keep_tags: tuple[str, ...] = (SEMVER_TAG, "latest")
    """Regular expressions a whole tag is matched against: matching tags are always kept."""
    retention_protect: tuple[str, ...] = ()
    """Manifest or config digests retention never deletes (images other machines run)."""

    @property
    def registry_url(self) -> str:
        return f"https://{self.domain}"

    @property
    def distribution(self) -> int:
        """The Distribution major version the image runs: the setting, or the image's tag."""
        return self.registry_major_version or image_major_version(self.registry_image)


def image_major_version(image: str) -> int:
    """3 for an image whose tag starts with 3 (registry:3, registry:3.0.0, ...), 2 for every other image."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    return 3 if re.match(r"^v?3(?:[.-]|$)", tag) else 2


# key -> (field name, parser). Parsers take the raw string and raise ValueError("accepted ...").
def _str(accepted: str, rule: Callable[[str], bool]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not rule(raw):
            raise ValueError(accepted)
        return raw

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda raw: None if raw == "" else parse(raw)


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"an integer from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = str(raw).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("true or false")


def _list(item: Callable[[str], T], accepted: str) -> Callable[[Any], tuple[T, ...]]:
    def parse(raw: Any) -> tuple[T, ...]:
        values = raw
        if isinstance(raw, str):
            try:
                values = json.loads(raw) if raw.strip() else []
            except json.JSONDecodeError:
                raise ValueError(f"a JSON list of {accepted}") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"a JSON list of {accepted}")
        bad = [v for v in values if not _accepts(item, v)]
        if bad:
            raise ValueError(f"a list of {accepted} (bad: {', '.join(map(repr, bad))})")
        return tuple(item(v) for v in values)

    return parse


def _accepts(parse: Callable[[str], Any], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _is_domain(value: str) -> bool:
    return len(value) <= 253 and bool(_DOMAIN_RE.match(value))


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return value == "localhost" or (len(value) <= 253 and bool(re.match(rf"^(?:{_LABEL}\.)*{_LABEL}$", value)))


def _is_email(value: str) -> bool:
    m = _EMAIL_RE.match(value)
    return m is not None and _is_domain(m.group("domain").lower())


def _is_abs_path(value: str) -> bool:
    return bool(_SAFE_PATH_RE.match(value)) and posixpath.normpath(value) == value and value != "/"


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError("CIDRs such as 203.0.113.0/24 or 2001:db8::/32") from None


def _is_url(value: str) -> bool:
    return bool(re.match(r"^https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?$", value))


_PATH = "an absolute normalised path of letters, digits and ._/@+-"
MAX_REPLICAS = 8
_CALENDAR = "a systemd OnCalendar expression such as 'Sun *-*-* 03:00:00' or 'daily', or empty to disable the timer"


_GRACE_RE = re.compile(r"^([0-9]{1,6})([smhd]?)$")
_GRACE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_GRACE = 30 * 86400
_GRACE = "0, or a whole number of seconds, minutes, hours or days up to 30d, such as 45m, 6h or 2d"


def _grace(raw: str) -> int:
    m = _GRACE_RE.match(str(raw).strip())
    if not m:
        raise ValueError(_GRACE)
    seconds = int(m.group(1)) * _GRACE_UNITS[m.group(2)]
    if seconds > MAX_GRACE:
        raise ValueError(_GRACE)
    return seconds


def _major(raw: str) -> int:
    if str(raw).strip() not in ("2", "3"):
        raise ValueError("2 or 3, or empty to read it from the image's tag")
    return int(raw)


def _is_s3_endpoint(value: str) -> bool:
    m = re.match(r"^(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::([0-9]{1,5}))?/?$", value)
    return m is not None and (m.group(3) is None or 1 <= int(m.group(3)) <= 65535)


def _is_calendar(value: str) -> bool:
    return value == "" or (value == value.strip() and bool(_CALENDAR_RE.match(value)))


_REPO_GLOB_RE = re.compile(r"^[a-z0-9._/*?-]{1,255}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_RULE = "PATTERN=N: a repository glob (lower-case letters, digits, ._/- and * or ?) and how many tags to keep (1-10000), e.g. 'ruby-demo-app=10' or '*=20'"


def _rule(raw: str) -> tuple[str, int]:
    pattern, sep, count = raw.rpartition("=")
    if not sep or not _REPO_GLOB_RE.match(pattern) or not count.isdigit() or not 1 <= int(count) <= 10000:
        raise ValueError(_RULE)
    return pattern, int(count)


def _rules(raw: Any) -> tuple[tuple[str, int], ...]:
    rules = _list(_rule, _RULE)(raw)
    if not rules:
        raise ValueError(f"a non-empty JSON list of {_RULE}")
    return rules


def _tag_regexp(raw: str) -> str:
    try:
        re.compile(raw)
    except re.error as exc:
        raise ValueError(f"Python regular expressions matched against the whole tag ({raw!r}: {exc})") from None
    if not raw or "\n" in raw:
        raise ValueError("non-empty one-line Python regular expressions matched against the whole tag")
    return raw


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
_USER = "1-64 characters of letters, digits and ._@- (no ':' or whitespace)"

SCHEMA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "host": ("host", _str("a DNS name or IP address (not empty)", _is_host)),
    "sshPort": ("ssh_port", _int(1, 65535)),
    "sshUser": ("ssh_user", _str(_USER, lambda v: bool(_USER_RE.match(v)))),
    "sshPrivateKey": ("ssh_private_key", _optional(_str("a PEM/OpenSSH private key", lambda v: "PRIVATE KEY" in v))),
    "sshHostKey": ("ssh_host_key", _optional(_str("a public key line such as 'ssh-ed25519 AAAA...'", lambda v: bool(_HOST_KEY_RE.match(v.strip()))))),
    "domain": ("domain", _str("a lower-case DNS name with at least two labels, e.g. registry.example.com", _is_domain)),
    "acmeEmail": ("acme_email", _str("an email address such as ops@example.com", _is_email)),
    "acmeCaUrl": ("acme_ca_url", _optional(_str("an https:// URL of an ACME directory", _is_url))),
    "acmeCaRoot": ("acme_ca_root", _optional(_str(_PATH, _is_abs_path))),
    "pushUser": ("push_user", _str(_USER, lambda v: bool(_USER_RE.match(v)))),
    "pullUser": ("pull_user", _str(_USER, lambda v: bool(_USER_RE.match(v)))),
    "passwordLength": ("password_length", _int(20, 72)),
    "existingPushPassword": ("existing_push_password", _optional(_str(
        "1-72 bytes of printable characters (no newline); it must be the password CI pushes with today",
        lambda v: 0 < len(v.encode()) <= 72 and v.isprintable(),
    ))),
    "credentialRotation": ("credential_rotation", _str("1-64 characters of letters, digits and ._-", lambda v: bool(_ROTATION_RE.match(v)))),
    "credentialGracePeriod": ("credential_grace_period", _grace),
    "registryImage": ("registry_image", _str("an image reference such as registry:2 or registry@sha256:<64 hex>", lambda v: bool(_IMAGE_RE.match(v)))),
    "registryPort": ("registry_port", _int(1024, 65535)),
    "registryMajorVersion": ("registry_major_version", _optional(_major)),
    "registryReplicas": ("registry_replicas", _int(1, MAX_REPLICAS)),
    "storage": ("storage", _str("filesystem or s3", lambda v: v in ("filesystem", "s3"))),
    "s3Endpoint": ("s3_endpoint", _optional(_str("an http:// or https:// URL of the S3 server, such as http://127.0.0.1:8333 or https://s3.example.com (no path)", _is_s3_endpoint))),
    "s3Region": ("s3_region", _str("a region name of letters, digits and - such as us-east-1", lambda v: bool(re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", v)))),
    "s3Bucket": ("s3_bucket", _optional(_str("an S3 bucket name: 3-63 lower-case letters, digits, '.' and '-'", lambda v: bool(re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", v))))),
    "s3RootDirectory": ("s3_root_directory", _str("empty, or a prefix such as /registry (a '/' then letters, digits and ._/-)", lambda v: v == "" or bool(re.match(r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", v)))),
    "s3ForcePathStyle": ("s3_force_path_style", _bool),
    "s3AccessKey": ("s3_access_key", _optional(_str("1-128 printable characters without whitespace", lambda v: bool(re.match(r"^[!-~]{1,128}$", v))))),
    "s3SecretKey": ("s3_secret_key", _optional(_str("1-256 printable characters without whitespace", lambda v: bool(re.match(r"^[!-~]{1,256}$", v))))),
    "s3CaFile": ("s3_ca_file", _optional(_str(_PATH, _is_abs_path))),
    "dataDir": ("data_dir", _str(_PATH, _is_abs_path)),
    "allowlist": ("allowlist", _list(_cidr, "CIDRs such as 203.0.113.0/24")),
    "caddyfile": ("caddyfile", _str(_PATH, _is_abs_path)),
    "caddySiteFile": ("caddy_site_file", _str(_PATH, _is_abs_path)),
    "k3sTrust": ("k3s_trust", _bool),
    "k3sService": ("k3s_service", _str("a systemd unit name such as k3s or k3s-agent", lambda v: bool(_UNIT_RE.match(v)))),
    "k3sRegistriesFile": ("k3s_registries_file", _str(_PATH, _is_abs_path)),
    "registryCaFile": ("registry_ca_file", _optional(_str(_PATH, _is_abs_path))),
    "flux": ("flux", _bool),
    "kubeconfig": ("kubeconfig", _optional(_str("kubeconfig contents", lambda v: "apiVersion" in v or "clusters" in v))),
    "fluxNamespace": ("flux_namespace", _str("a Kubernetes namespace name", lambda v: bool(re.match(rf"^{_LABEL}$", v)))),
    "fluxSecretName": ("flux_secret_name", _str("a Kubernetes object name", lambda v: _is_host(v) and len(v) <= 253)),
    "fluxApiVersion": ("flux_api_version", _str(" or ".join(FLUX_API_VERSIONS), lambda v: v in FLUX_API_VERSIONS)),
    "fluxImages": ("flux_images", _list(_str("repository names", lambda v: bool(_REPO_RE.match(v))), "repository names such as ruby-demo-app")),
    "fluxInterval": ("flux_interval", _str("a Go duration such as 1m or 1h30m", lambda v: bool(_DURATION_RE.match(v)))),
    "verify": ("verify", _bool),
    "gcSchedule": ("gc_schedule", _str(_CALENDAR, _is_calendar)),
    "gcDeleteUntagged": ("gc_delete_untagged", _bool),
    "backupSchedule": ("backup_schedule", _str(_CALENDAR, _is_calendar)),
    "backupDir": ("backup_dir", _str(_PATH, _is_abs_path)),
    "backupKeep": ("backup_keep", _int(1, 1000)),
    "retention": ("retention", _bool),
    "retentionRules": ("retention_rules", _rules),
    "retentionKeepTags": ("retention_keep_tags", _list(_tag_regexp, "Python regular expressions matched against the whole tag, such as 'latest' or 'release-.*'")),
    "retentionProtect": ("retention_protect", _list(_str("digests", lambda v: bool(_DIGEST_RE.match(v))), "digests such as sha256:<64 lower-case hex>")),
}

SECRET_KEYS = frozenset({"sshPrivateKey", "kubeconfig", "existingPushPassword", "s3AccessKey", "s3SecretKey"})
S3_KEYS = ("s3Endpoint", "s3Bucket", "s3RootDirectory", "s3AccessKey", "s3SecretKey", "s3CaFile")


def _show(key: str, raw: Any) -> str:
    return "<secret>" if key in SECRET_KEYS else repr(raw)


def parse_settings(raw: Mapping[str, Any], project: str = "registry") -> Settings:
    """Validate raw config (key -> string, as Pulumi stores it) into Settings, or raise ConfigError."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for key in sorted(set(raw) - set(SCHEMA)):
        errors.append(f"{project}:{key} is not a known setting; known settings: {', '.join(sorted(SCHEMA))}")
    for key, (name, parse) in SCHEMA.items():
        if key not in raw:
            continue
        value = raw[key]
        try:
            values[name] = parse(value if isinstance(value, str | list) else json.dumps(value))
        except ValueError as exc:
            errors.append(f"{project}:{key} = {_show(key, value)} is invalid; accepted: {exc}")
    if "host" not in values and not any(e.startswith(f"{project}:host ") for e in errors):
        errors.append(f"{project}:host is not set; accepted: a DNS name or IP address (not empty)")
    users_valid = not any(e.startswith((f"{project}:pushUser ", f"{project}:pullUser ")) for e in errors)
    if users_valid and values.get("push_user", Settings.push_user) == values.get("pull_user", Settings.pull_user):
        errors.append(f"{project}:pullUser = {values.get('pull_user', Settings.pull_user)!r} is invalid; accepted: a name different from pushUser")
    # Checked whenever both paths are valid on their own, so it is reported together with any other problem.
    if not any(e.startswith((f"{project}:dataDir ", f"{project}:backupDir ")) for e in errors):
        data, backups = values.get("data_dir", Settings.data_dir), values.get("backup_dir", Settings.backup_dir)
        if _inside(backups, data) or _inside(data, backups):
            errors.append(
                f"{project}:backupDir = {backups!r} is invalid; accepted: a directory outside dataDir ({data!r}) that does not contain it"
            )
    errors += _storage_errors(raw, values, project, errors)
    if errors:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(errors))
    return Settings(**values)


def _storage_errors(raw: Mapping[str, Any], values: Mapping[str, Any], project: str, errors: list[str]) -> list[str]:
    """What the storage and replica settings must agree on (each valid on its own)."""
    found: list[str] = []
    bad = {e.split(" ", 1)[0].split(":", 1)[1] for e in errors if e.startswith(f"{project}:")}
    storage = values.get("storage", Settings.storage)
    if "storage" in bad:
        return found
    if storage == "filesystem":
        for key in S3_KEYS:
            if raw.get(key) not in (None, "") and key not in bad:
                found.append(f"{project}:{key} = {_show(key, raw[key])} is invalid; accepted: empty while storage = 'filesystem' (set storage to s3 to use it)")
    else:
        for key in ("s3Bucket", "s3AccessKey", "s3SecretKey"):
            if values.get(SCHEMA[key][0]) is None and key not in bad:
                found.append(f"{project}:{key} is not set; accepted: {'a bucket name' if key == 's3Bucket' else 'the S3 credential (set it with --secret)'}, required with storage = 's3'")
        endpoint = values.get("s3_endpoint")
        if values.get("s3_ca_file") and not (endpoint or "").startswith("https://") and "s3Endpoint" not in bad:
            found.append(f"{project}:s3CaFile = {values['s3_ca_file']!r} is invalid; accepted: a CA file only with an https:// s3Endpoint (it is {endpoint!r})")
        image, major = values.get("registry_image", Settings.registry_image), values.get("registry_major_version")
        distribution = major or image_major_version(image)
        if endpoint and distribution == 2 and not values.get("s3_force_path_style", True) and not bad & {"registryImage", "registryMajorVersion"}:
            found.append(
                f"{project}:s3ForcePathStyle = 'false' is invalid; accepted: true with Distribution 2 ({image!r}) and an s3Endpoint "
                "(2.8 always uses path-style addressing with an endpoint; virtual-hosted addressing needs registry:3)"
            )
    if storage == "s3" and values.get("retention") and "retention" not in bad:
        found.append(
            f"{project}:retention = 'true' is invalid; accepted: false with storage = 's3' "
            "(tag retention dates tags from the data directory, which S3 storage does not use)"
        )
    replicas, port = values.get("registry_replicas", 1), values.get("registry_port", Settings.registry_port)
    if port + replicas - 1 > 65535 and not bad & {"registryReplicas", "registryPort"}:
        found.append(f"{project}:registryReplicas = {str(replicas)!r} is invalid; accepted: at most {65535 - port + 1} with registryPort = {port} (replica i listens on registryPort + i - 1)")
    return found


def project_config(project: str) -> dict[str, Any]:
    """Every `<project>:<key>` config value the Pulumi engine handed this program, un-namespaced."""
    from pulumi.runtime import config as runtime_config

    merged: dict[str, Any] = {}
    env = os.environ.get("PULUMI_CONFIG")
    if env:
        merged.update(json.loads(env))
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{project}:"
    return {k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)}
