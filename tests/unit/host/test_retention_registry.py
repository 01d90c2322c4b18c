"""host/usr/local/lib/registry-maintenance/retention.py against a small in-process registry on loopback: what it
reads, deletes, logs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from renderers import shipped

if TYPE_CHECKING:  # the shipped file, by the name pyproject.toml's mypy_path gives it
    import retention
else:
    retention = shipped.module(shipped.RETENTION)


T0 = 1_780_000_000.0


DAY = 86400.0


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _stamp(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".123456789Z"


@dataclass
class FakeRegistry:
    """Distribution's read and delete API, for one data directory whose tag links carry the push times."""

    data_dir: Path
    repos: dict[str, dict[str, str]] = field(default_factory=dict)
    """repo -> tag -> digest."""
    manifests: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)

    def _link(self, repo: str, *parts: str) -> Path:
        return self.data_dir / "docker/registry/v2/repositories" / repo / "_manifests" / Path(*parts) / "link"

    def put_manifest(self, repo: str, document: dict[str, Any], tag: str | None = None, pushed: float | None = None) -> str:
        body = json.dumps(document).encode()
        digest = _digest(body)
        self.manifests.setdefault(repo, {})[digest] = (document["mediaType"], body)
        revision = self._link(repo, "revisions", "sha256", digest[7:])
        revision.parent.mkdir(parents=True, exist_ok=True)
        revision.write_text(digest)
        if tag is not None:
            self.repos.setdefault(repo, {})[tag] = digest
            link = self._link(repo, "tags", tag, "current")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.write_text(digest)
            if pushed is not None:
                os.utime(link, (pushed, pushed))
        return digest

    def image(self, repo: str, name: str, created: str | None, tag: str | None = None, pushed: float | None = None) -> str:
        config_doc: dict[str, Any] = {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [name]}}
        if created is not None:
            config_doc["created"] = created
        config = json.dumps(config_doc).encode()
        self.blobs[_digest(config)] = config
        return self.put_manifest(repo, {
            "schemaVersion": 2, "mediaType": retention.DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _digest(config), "size": len(config)},
            "layers": [],
        }, tag, pushed)

    def index(self, repo: str, children: list[str], tag: str, pushed: float, created: str | None = None) -> str:
        document: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": retention.OCI_INDEX,
            "manifests": [
                {"mediaType": retention.DOCKER_MANIFEST, "digest": c, "size": 1, "platform": {"architecture": a, "os": "linux"}}
                for c, a in zip(children, ["amd64", "arm64"], strict=False)
            ],
        }
        if created:
            document["annotations"] = {retention.CREATED_ANNOTATION: created}
        return self.put_manifest(repo, document, tag, pushed)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/v2/_catalog"):
                    return self.reply(200, json.dumps({"repositories": sorted(fake.repos)}).encode())
                m = re.match(r"^/v2/(.+)/(tags/list|manifests|blobs)(?:/([^?]+))?", self.path)
                if not m:
                    return self.reply(404)
                repo, kind, ref = m.groups()
                if kind == "tags/list":
                    return self.reply(200, json.dumps({"name": repo, "tags": sorted(fake.repos.get(repo, {}))}).encode())
                if kind == "blobs":
                    return self.reply(200, fake.blobs[ref]) if ref in fake.blobs else self.reply(404)
                digest = fake.repos.get(repo, {}).get(ref, ref)
                if digest not in fake.manifests.get(repo, {}):
                    return self.reply(404)
                media_type, body = fake.manifests[repo][digest]
                return self.reply(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})

            def do_DELETE(self) -> None:  # noqa: N802
                m = re.match(r"^/v2/(.+)/manifests/(sha256:[0-9a-f]{64})$", self.path)
                if not m or m.group(2) not in fake.manifests.get(m.group(1), {}):
                    return self.reply(404)
                repo, digest = m.groups()
                del fake.manifests[repo][digest]
                fake.repos[repo] = {t: d for t, d in fake.repos[repo].items() if d != digest}
                fake.deletes.append(digest)
                return self.reply(202)

        return Handler


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeRegistry, str]]:
    registry = FakeRegistry(tmp_path / "data")
    server = ThreadingHTTPServer(("127.0.0.1", 0), registry.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield registry, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fake_k3s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digests: list[str], fail: bool = False) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    listing = {"images": [{"id": "sha256:" + "e" * 64, "repoTags": [], "repoDigests": [f"registry.example.com/app@{d}" for d in digests]}]}
    script = "#!/bin/sh\necho 'connection refused' >&2; exit 1\n" if fail else f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(listing)}\nEOF\n"
    (bin_dir / "k3s").write_text(script)
    (bin_dir / "k3s").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def config(base: str, data_dir: Path, keep: int = 1, k3s: str = "if-present") -> dict[str, Any]:
    return {
        "enabled": True, "registry": base, "data_dir": str(data_dir), "rules": [{"repositories": "app", "keep": keep}],
        "keep_tags": ["latest"], "protect": [], "k3s": k3s,
    }


def run(cfg: dict[str, Any], dry_run: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    return retention.run(cfg, dry_run, out), out.getvalue()


def test_an_old_multi_arch_tag_goes_with_its_platform_manifests_and_a_kept_one_keeps_its_own(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    fake_k3s(tmp_path, monkeypatch, [])
    old = [reg.image("app", f"old-{a}", _stamp(T0)) for a in ("amd64", "arm64")]
    new = [reg.image("app", f"new-{a}", _stamp(T0 + DAY)) for a in ("amd64", "arm64")]
    old_index = reg.index("app", old, "c-old", pushed=T0)
    new_index = reg.index("app", new, "c-new", pushed=T0 + DAY)
    code, out = run(config(base, reg.data_dir))
    assert code == 0, out
    assert reg.deletes == [old_index, *sorted(old)]  # the index first, then its platform manifests
    assert sorted(reg.repos["app"]) == ["c-new"] and set(new) <= set(reg.manifests["app"]) and new_index in reg.manifests["app"]
    assert f"retention: deleted app:c-old ({old_index}, created 2026-05-28T20:26:40Z" in out
    assert out.count("a platform manifest of a deleted index") == 2
    assert "deleted 1 tags (3 manifests)" in out


def test_an_index_annotation_dates_it_before_its_platform_images(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    fake_k3s(tmp_path, monkeypatch, [])
    # The platform images look new, but the index says it was created long ago.
    reg.index("app", [reg.image("app", "a", _stamp(T0 + 9 * DAY))], "annotated", pushed=T0 + 9 * DAY, created=_stamp(T0))
    reg.image("app", "b", _stamp(T0 + DAY), "plain", pushed=T0 + DAY)
    code, out = run(config(base, reg.data_dir), dry_run=True)
    assert code == 0 and "would delete app:annotated" in out and reg.deletes == []


def test_push_time_from_the_tag_link_orders_images_without_a_creation_time(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    fake_k3s(tmp_path, monkeypatch, [])
    for i, pushed in enumerate([T0 + 2 * DAY, T0, T0 + DAY]):
        reg.image("app", f"img{i}", None, f"t{i}", pushed=pushed)
    reg.image("app", "pinned", "1970-01-01T00:00:00Z", "pinned", pushed=T0 + 3 * DAY)
    code, out = run(config(base, reg.data_dir, keep=2))
    assert code == 0, out
    assert sorted(reg.repos["app"]) == ["pinned", "t0"]
    assert "created unknown, pushed 2026-05-28T20:26:40Z" in out  # t1


def test_dry_run_deletes_nothing_and_says_retention_is_off(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    fake_k3s(tmp_path, monkeypatch, [])
    for i in range(4):
        reg.image("app", f"i{i}", _stamp(T0 + i * DAY), f"t{i}", pushed=T0)
    code, out = run({**config(base, reg.data_dir), "enabled": False}, dry_run=True)
    assert code == 0 and reg.deletes == [] and len(reg.repos["app"]) == 4
    assert "retention is off" in out and out.count("would delete app:") == 3


def test_what_k3s_holds_stays_and_a_k3s_that_cannot_answer_stops_every_delete(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    digests = [reg.image("app", f"i{i}", _stamp(T0 + i * DAY), f"t{i}", pushed=T0) for i in range(4)]
    fake_k3s(tmp_path, monkeypatch, [], fail=True)
    code, out = run(config(base, reg.data_dir, k3s="required"))
    assert code == 1 and reg.deletes == []
    assert "FAILED: k3s crictl images failed (connection refused)" in out
    fake_k3s(tmp_path, monkeypatch, [digests[0]])
    code, out = run(config(base, reg.data_dir, k3s="required"))
    assert code == 0, out
    assert sorted(reg.repos["app"]) == ["t0", "t3"]
    assert f"kept app:t0 ({digests[0]}): in use on a k3s node" in out


def test_without_k3s_on_the_host_only_a_required_check_fails(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, base = fake
    reg.image("app", "i", _stamp(T0), "t", pushed=T0)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run(config(base, reg.data_dir, k3s="required"))[0] == 1
    code, out = run(config(base, reg.data_dir, k3s="if-present"))
    assert code == 0 and "in use: no k3s on this host" in out


def test_an_unreachable_registry_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = run(config("http://127.0.0.1:9", tmp_path))
    assert code == 1 and "FAILED: GET http://127.0.0.1:9/v2/_catalog" in out


def test_the_deploy_check_s_probe_image_is_never_counted_as_an_application_image(
    fake: tuple[FakeRegistry, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from renderers.probe_image import PROBE_REPOSITORY

    reg, base = fake
    fake_k3s(tmp_path, monkeypatch, [])
    for i in range(3):
        reg.image(PROBE_REPOSITORY, f"p{i}", _stamp(T0 + i * DAY), f"v{i}", pushed=T0)
        reg.image("app", f"a{i}", _stamp(T0 + i * DAY), f"t{i}", pushed=T0)
    # A rule matching every repository, as the default `*=N` does.
    cfg = {**config(base, reg.data_dir), "rules": [{"repositories": "*", "keep": 1}], "ignore_repositories": [PROBE_REPOSITORY]}
    code, out = run(cfg)
    assert code == 0, out
    assert len(reg.repos[PROBE_REPOSITORY]) == 3 and len(reg.repos["app"]) == 1
    assert f"{PROBE_REPOSITORY}: the deploy check's probe image, not an application image: left alone" in out


def test_the_rendered_retention_settings_name_the_probe_repository() -> None:
    from renderers.probe_image import PROBE_REPOSITORY
    from renderers.retention_config import render_retention_config
    from tests.unit.support import SPEC

    assert json.loads(render_retention_config(SPEC))["ignore_repositories"] == [PROBE_REPOSITORY]
