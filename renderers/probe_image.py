"""The deploy check's probe image: one empty layer, byte for byte the same on every run, per platform."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

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


def probe_platforms() -> Mapping[str, ProbeImage]:
    """The probe image for each platform the check knows, by platform string."""
    return {probe.platform: probe for probe in (probe_image(a, v) for _, a, v in PROBE_PLATFORMS)}
