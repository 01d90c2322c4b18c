"""Config in, Settings out: every rule runs before any resource is registered; all problems are reported at once."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from settings.model import ConfigError, Settings, image_major_version
from settings.schema import SCHEMA


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


REQUIRED = {
    "host": "a DNS name or IP address (not empty)",
    "domain": "the registry's public DNS name, e.g. registry.example.com",
    "acmeEmail": "the ACME account's email address, e.g. ops@example.com",
}
"""Settings without a default: a stack that forgets them must not borrow another organisation's server or names."""
SECRET_KEYS = frozenset({"sshPrivateKey", "kubeconfig", "existingPushPassword", "s3AccessKey", "s3SecretKey"})
S3_KEYS = ("s3Endpoint", "s3Bucket", "s3RootDirectory", "s3AccessKey", "s3SecretKey", "s3CaFile")


def _show(key: str, raw: Any) -> str:
    return "<secret>" if key in SECRET_KEYS else repr(raw)


def parse_settings(raw: Mapping[str, Any], project: str = "registry", refused: Sequence[str] = ()) -> Settings:
    """Validate raw config (key -> string, as Pulumi stores it) into Settings, or raise ConfigError listing every
    problem, `refused` (settings/refusals.py: what needs more than the values) first."""
    errors: list[str] = list(refused)
    values: dict[str, Any] = {}
    for key in sorted(set(raw) - set(SCHEMA)):
        errors.append(f"{project}:{key} is not a known setting; known settings: {', '.join(sorted(SCHEMA))}")
    for key, (name, parse) in SCHEMA.items():
        if key not in raw or (key in REQUIRED and raw[key] == ""):
            continue
        value = raw[key]
        try:
            values[name] = parse(value if isinstance(value, str | list) else json.dumps(value))
        except ValueError as exc:
            errors.append(f"{project}:{key} = {_show(key, value)} is invalid; accepted: {exc}")
    for key, accepted in REQUIRED.items():
        if SCHEMA[key][0] not in values and not any(e.startswith(f"{project}:{key} ") for e in errors):
            errors.append(f"{project}:{key} is not set; accepted: {accepted} (`pulumi config set {key} VALUE`; it has no default)")
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
    if "nodes" in values:
        values["nodes"] = _resolved_nodes(values)
        errors += _node_errors(values, project)
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
    backup_s3 = values.get("backup_s3_bucket") is not None
    if backup_s3 and storage != "filesystem":
        found.append(f"{project}:backupS3Bucket = {values['backup_s3_bucket']!r} is invalid; accepted: empty with storage = {storage!r} (the store backs its data up itself)")
    if backup_s3 and storage == "filesystem":
        for key in ("s3AccessKey", "s3SecretKey"):
            if values.get(SCHEMA[key][0]) is None and key not in bad:
                found.append(f"{project}:{key} is not set; accepted: the S3 credential (set it with --secret), required with backupS3Bucket")
    if storage == "filesystem":
        # Off-server backups use the same endpoint, region, credential and CA settings.
        allowed = {"s3Endpoint", "s3AccessKey", "s3SecretKey", "s3CaFile"} if backup_s3 else set()
        for key in S3_KEYS:
            if key in allowed:
                continue
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


def _resolved_nodes(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """Each node with the stack's SSH port, user and registries.yaml path where it names none of its own."""
    return tuple(
        dataclasses.replace(
            node,
            ssh_port=node.ssh_port or values.get("ssh_port", Settings.ssh_port),
            ssh_user=node.ssh_user or values.get("ssh_user", Settings.ssh_user),
            registries_file=node.registries_file or values.get("k3s_registries_file", Settings.k3s_registries_file),
        )
        for node in values["nodes"]
    )


def _node_errors(values: Mapping[str, Any], project: str) -> list[str]:
    """Every node is a machine of its own: not the registry's server (a node already when k3sTrust) nor another node."""
    seen: dict[tuple[str, int], str] = {}
    if values.get("k3s_trust", Settings.k3s_trust):
        seen[(values.get("host", ""), values.get("ssh_port", Settings.ssh_port))] = "the registry's own server (k3sTrust)"
    found = []
    for node in values["nodes"]:
        where = (node.address, node.ssh_port)
        if where in seen:
            found.append(
                f"{project}:nodes is invalid: node {node.name!r} ({node.address}:{node.ssh_port}) is {seen[where]} "
                "already; accepted: each node once (set k3sTrust=false to list the registry's server as a node)"
            )
        seen.setdefault(where, f"node {node.name!r}")
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


def secret_config_keys(project: str, keys: Iterable[str]) -> frozenset[str]:
    """Which of `keys` (un-namespaced) the engine handed this program as secrets."""
    from pulumi.runtime import config as runtime_config

    env = set(runtime_config.get_config_secret_keys_env())
    return frozenset(k for k in keys if f"{project}:{k}" in env or runtime_config.is_config_secret(f"{project}:{k}"))
