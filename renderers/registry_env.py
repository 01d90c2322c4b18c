"""The registry container's --env-file: where it stores (data directory or S3), deletion, the HTTP secret."""

from __future__ import annotations

import json
from dataclasses import dataclass

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


NOTIFY_IGNORED_MEDIA_TYPES = ("application/octet-stream",)
"""Blob events (layers, configs) carry this media type: only manifest pushes reach the relay."""


def notifications_endpoints(url: str) -> str:
    """Distribution's `notifications.endpoints` as one line of YAML (JSON): the relay on loopback, manifest pushes
    only. 2.8 cannot index the list from the environment, so the whole list is one variable; it ignores
    `ignore.actions` unless a media type is ignored too, which this does. Nothing in it is secret: the registry logs
    each endpoint's URL and headers at startup."""
    endpoint = {
        "name": "flux-receiver",
        "url": url,
        "timeout": "2s",
        "threshold": 3,
        "backoff": "1s",
        "ignoredmediatypes": list(NOTIFY_IGNORED_MEDIA_TYPES),
        "ignore": {"mediatypes": list(NOTIFY_IGNORED_MEDIA_TYPES), "actions": ["pull"]},
    }
    return json.dumps([endpoint], separators=(",", ":"))


def render_registry_env(
    http_secret: str,
    container_root: str = "/var/lib/registry",
    storage: StorageSpec | None = None,
    distribution: int = 2,
    s3_access_key: str = "",
    s3_secret_key: str = "",
    notify_url: str | None = None,
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
    if notify_url:
        env["REGISTRY_NOTIFICATIONS_ENDPOINTS"] = notifications_endpoints(notify_url)
    bad = [k for k, v in env.items() if "\n" in v or "\r" in v]
    if bad:
        raise ValueError(f"env file values cannot hold a newline: {bad}")
    return "".join(f"{k}={v}\n" for k, v in env.items())
