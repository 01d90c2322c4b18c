"""Every config key's parser: the raw string in, the value or ValueError("what would be accepted") out."""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from collections.abc import Callable
from typing import Any, TypeVar

from settings.model import FLUX_API_VERSIONS, K3S_SERVICES, MAX_REPLICAS, NodeSpec

T = TypeVar("T")


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


_USER = "1-64 characters of letters, digits and ._@- (no ':' or whitespace)"

_NODE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_NODE_KEYS = {
    "name": "a short name of 1-32 lower-case letters, digits and - (not 'trust')",
    "address": "a DNS name or IP address",
    "sshPort": "an integer from 1 to 65535",
    "user": _USER,
    "hostKey": "a public key line such as 'ssh-ed25519 AAAA...'",
    "service": " or ".join(K3S_SERVICES),
    "registriesFile": _PATH,
}
_NODES = (
    "a JSON list of nodes such as [{\"name\": \"agent-1\", \"address\": \"10.0.0.21\"}]; each with name and address, "
    "optionally sshPort, user, hostKey, service (k3s-agent by default, or k3s) and registriesFile"
)


def _node(raw: Any) -> tuple[NodeSpec | None, list[str]]:
    """One node object: the spec, or the problems found (each naming the node and its key)."""
    if not isinstance(raw, dict):
        return None, [f"{raw!r} is not an object"]
    label = f"node {raw.get('name')!r}" if isinstance(raw.get("name"), str) else f"node {raw!r}"
    problems = [f"{label}: unknown key {key!r} (known: {', '.join(_NODE_KEYS)})" for key in sorted(set(raw) - set(_NODE_KEYS))]
    problems += [f"{label}: {key} is missing; accepted: {_NODE_KEYS[key]}" for key in ("name", "address") if key not in raw]
    rules: dict[str, Callable[[Any], bool]] = {
        "name": lambda v: isinstance(v, str) and bool(_NODE_NAME_RE.match(v)) and v != "trust",
        "address": lambda v: isinstance(v, str) and v != "" and _is_host(v),
        "sshPort": lambda v: not isinstance(v, bool) and str(v).isdigit() and 1 <= int(v) <= 65535,
        "user": lambda v: isinstance(v, str) and bool(_USER_RE.match(v)),
        "hostKey": lambda v: isinstance(v, str) and bool(_HOST_KEY_RE.match(v.strip())),
        "service": lambda v: v in K3S_SERVICES,
        "registriesFile": lambda v: isinstance(v, str) and _is_abs_path(v),
    }
    for key, ok in rules.items():
        if key in raw and not ok(raw[key]):
            problems.append(f"{label}: {key} = {raw[key]!r} is invalid; accepted: {_NODE_KEYS[key]}")
    if problems:
        return None, problems
    return NodeSpec(
        name=raw["name"], address=raw["address"],
        ssh_port=int(raw["sshPort"]) if "sshPort" in raw else None, ssh_user=raw.get("user"),
        ssh_host_key=raw["hostKey"].strip() if "hostKey" in raw else None,
        service=raw.get("service", "k3s-agent"), registries_file=raw.get("registriesFile"),
    ), []


def _nodes(raw: Any) -> tuple[NodeSpec, ...]:
    values = raw
    if isinstance(raw, str):
        try:
            values = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError:
            raise ValueError(_NODES) from None
    if not isinstance(values, list):
        raise ValueError(_NODES)
    specs: list[NodeSpec] = []
    problems: list[str] = []
    for item in values:
        spec, found = _node(item)
        problems += found
        if spec is not None:
            specs.append(spec)
    names = [s.name for s in specs]
    problems += [f"node name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise ValueError(f"{_NODES} ({'; '.join(problems)})")
    return tuple(specs)

SCHEMA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "host": ("host", _str("a DNS name or IP address (not empty)", _is_host)),
    "sshPort": ("ssh_port", _int(1, 65535)),
    "sshUser": ("ssh_user", _str(_USER, lambda v: bool(_USER_RE.match(v)))),
    "sshPrivateKey": ("ssh_private_key", _optional(_str("a PEM/OpenSSH private key", lambda v: "PRIVATE KEY" in v))),
    "sshHostKey": ("ssh_host_key", _optional(_str("a public key line such as 'ssh-ed25519 AAAA...'", lambda v: bool(_HOST_KEY_RE.match(v.strip()))))),
    "sshHostKeyCheck": ("ssh_host_key_check", _bool),
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
    "nodes": ("nodes", _nodes),
    "registryCaFile": ("registry_ca_file", _optional(_str(_PATH, _is_abs_path))),
    "flux": ("flux", _bool),
    "kubeconfig": ("kubeconfig", _optional(_str("kubeconfig contents", lambda v: "apiVersion" in v or "clusters" in v))),
    "kubeContext": ("kube_context", _optional(_str("a kubeconfig context name (letters, digits and ._@:/-)", lambda v: bool(re.match(r"^[A-Za-z0-9._@:/-]{1,253}$", v))))),
    "fluxNamespace": ("flux_namespace", _str("a Kubernetes namespace name", lambda v: bool(re.match(rf"^{_LABEL}$", v)))),
    "fluxSecretName": ("flux_secret_name", _str("a Kubernetes object name", lambda v: _is_host(v) and len(v) <= 253)),
    "fluxApiVersion": ("flux_api_version", _str(" or ".join(FLUX_API_VERSIONS), lambda v: v in FLUX_API_VERSIONS)),
    "fluxImages": ("flux_images", _list(_str("repository names", lambda v: bool(_REPO_RE.match(v))), "repository names such as ruby-demo-app")),
    "fluxInterval": ("flux_interval", _str("a Go duration such as 1m or 1h30m", lambda v: bool(_DURATION_RE.match(v)))),
    "fluxReceiver": ("flux_receiver", _bool),
    "fluxReceiverAddress": ("flux_receiver_address", _str("empty, or host:port such as 127.0.0.1:9292 or 10.43.12.7:80", lambda v: v == "" or bool(re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$", v)))),
    "fluxHookPort": ("flux_hook_port", _int(1024, 65535)),
    "fluxCaCert": ("flux_ca_cert", _optional(_str("PEM certificates (-----BEGIN CERTIFICATE-----)", lambda v: "-----BEGIN CERTIFICATE-----" in v and "PRIVATE KEY" not in v))),
    "verify": ("verify", _bool),
    "gcSchedule": ("gc_schedule", _str(_CALENDAR, _is_calendar)),
    "gcDeleteUntagged": ("gc_delete_untagged", _bool),
    "backupSchedule": ("backup_schedule", _str(_CALENDAR, _is_calendar)),
    "backupDir": ("backup_dir", _str(_PATH, _is_abs_path)),
    "backupKeep": ("backup_keep", _int(1, 1000)),
    "backupS3Bucket": ("backup_s3_bucket", _optional(_str("an S3 bucket name: 3-63 lower-case letters, digits, '.' and '-'", lambda v: bool(re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", v))))),
    "backupS3Prefix": ("backup_s3_prefix", _str("empty, or a prefix such as registry/prod (letters, digits and ._/-)", lambda v: v == "" or bool(re.match(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,200}$", v)))),
    "backupMinFreePercent": ("backup_min_free_percent", _int(0, 90)),
    "retention": ("retention", _bool),
    "retentionRules": ("retention_rules", _rules),
    "retentionKeepTags": ("retention_keep_tags", _list(_tag_regexp, "Python regular expressions matched against the whole tag, such as 'latest' or 'release-.*'")),
    "retentionProtect": ("retention_protect", _list(_str("digests", lambda v: bool(_DIGEST_RE.match(v))), "digests such as sha256:<64 lower-case hex>")),
}
