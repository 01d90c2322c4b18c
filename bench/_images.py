"""A fresh random image for every push (an OCI layout streamed from os.urandom), and purging it from a registry's
storage afterwards."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# --- a fresh random image --------------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it on its way to `out` (if any)."""

    def __init__(self, out: IO[bytes] | io.RawIOBase | None = None) -> None:
        super().__init__()
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        if self.out is not None:
            self.out.write(b)
        return len(b)

    def tell(self) -> int:
        return self.size


class _Random(io.RawIOBase):
    """`size` bytes from os.urandom, read in whatever chunks the reader asks for."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


@dataclass(frozen=True)
class Layout:
    path: Path
    manifest: str
    blobs: tuple[str, ...]
    """every blob digest (layer, config, manifest) the push stores"""


def make_layout(dest: Path, size: int, tag: str) -> Layout:
    """An OCI layout holding one image: a gzip (stored, level 0) tar layer of `size` random bytes, its config and
    manifest. Level 0 keeps generation cheap; clients never recompress a layer that is already gzip. The layer is
    streamed to its file in 1 MiB pieces (a 1 GiB image never sits in memory)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = blobs / "layer.tmp"
    with open(tmp, "wb") as raw:
        gz_sink = _Sink(raw)
        with gzip.GzipFile(fileobj=gz_sink, mode="wb", compresslevel=0, mtime=0) as gz:
            tar_sink = _Sink(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=tar_sink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              copybufsize=1 << 20) as tar:
                info = tarfile.TarInfo("random.bin")
                info.size, info.mode, info.mtime = size, 0o644, 0
                tar.addfile(info, _Random(size))
    diff_id = "sha256:" + tar_sink.sha.hexdigest()
    layer_digest = gz_sink.sha.hexdigest()
    tmp.rename(blobs / layer_digest)

    def put(blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        (blobs / digest).write_bytes(blob)
        return "sha256:" + digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_digest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer_digest,
                    "size": gz_sink.size}],
    }).encode()
    manifest_digest = put(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return Layout(dest, manifest_digest, (f"sha256:{layer_digest}", config_digest, manifest_digest))


def purge(data_root: Path, repository_top: str, digests: Sequence[str]) -> None:
    """Delete what a round pushed from a registry's filesystem storage (untimed, between rounds): the repositories
    under `repository_top` and the blobs by digest. Digests are never pushed twice (every layer is fresh random
    data), so the registry's in-memory descriptor cache never answers for a deleted blob."""
    v2 = data_root / "docker" / "registry" / "v2"
    shutil.rmtree(v2 / "repositories" / repository_top, ignore_errors=True)
    for d in digests:
        hexd = d.split(":", 1)[1]
        shutil.rmtree(v2 / "blobs" / "sha256" / hexd[:2] / hexd, ignore_errors=True)
