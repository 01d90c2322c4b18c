"""Tag retention on the real test host: 30 per-commit tags and 3 semver tags, keep 5, one old tag in use by k3s.

The real Pulumi engine applies the program (one stack for the module, on the session's engine); the tests run in file
order and the last one destroys it. Flux is off: its part runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from renderers import shipped
from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.verify_script import curl_user_line
from tests.e2e.clients import CERT_DIR, stack_config
from tests.e2e.engine import Engine
from tests.e2e.test_operations import BACKUPS, DATA, NEVER, Ops, q
from tests.e2e.testhost import TestHost

if TYPE_CHECKING:  # the shipped file, by the name pyproject.toml's mypy_path gives it
    import retention
else:
    retention = shipped.module(shipped.RETENTION)

pytestmark = pytest.mark.e2e

STACK = "retention"
REPO = "ret/app"
KEEP = 5
COMMITS = 30
SEMVER = ("v1.0.0", "v1.1.0", "2.0.0-rc.1")
IN_USE = 3
"""The per-commit tag (by age, 0 = oldest) k3s pulls: old enough to go, but in use."""
LAYER_KIB = 256
BLOBS = f"{DATA}/docker/registry/v2/blobs"
MULTI = "ret/multi"
"""Multi-platform images: two OCI indexes of two platform images each; the rule keeps one index."""

# Built on the host against the registry on loopback (skopeo cannot make an index out of local images): every
# platform manifest is pushed by digest (untagged), then each index under its tag. Prints what it pushed as JSON.
MAKE_INDEXES = r"""
import hashlib, json, os, sys, urllib.request
base, repo = "http://127.0.0.1:5000", sys.argv[1]
def call(method, path, data=b"", ctype=None):
    req = urllib.request.Request(path if path.startswith("http") else base + path, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req) as resp:
        return resp.headers
def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()
def blob(data):
    location = call("POST", f"/v2/{repo}/blobs/uploads/")["Location"]
    call("PUT", location + ("&" if "?" in location else "?") + "digest=" + digest(data), data, "application/octet-stream")
    return {"digest": digest(data), "size": len(data)}
def manifest(document, media_type, ref=None):
    body = json.dumps(document).encode()
    call("PUT", f"/v2/{repo}/manifests/{ref or digest(body)}", body, media_type)
    return {"mediaType": media_type, "digest": digest(body), "size": len(body)}
out = {}
for tag, created in (("multi-old", "2021-01-01T00:00:00Z"), ("multi-new", "2022-01-01T00:00:00Z")):
    children, layers = [], []
    for arch in ("amd64", "arm64"):
        layer = blob(os.urandom(128 * 1024))
        config = json.dumps({"architecture": arch, "os": "linux", "created": created,
                             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode()
        child = manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]},
                         "application/vnd.oci.image.manifest.v1+json")
        children.append({**child, "platform": {"architecture": arch, "os": "linux"}})
        layers.append(layer["digest"])
    index = manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children},
                     "application/vnd.oci.image.index.v1+json", tag)
    out[tag] = {"index": index["digest"], "children": [c["digest"] for c in children], "layers": layers}
print(json.dumps(out))
"""


def commit_tag(i: int) -> str:
    """A 12-hex commit tag as CI's `${GITHUB_SHA::12}` makes, never all digits (that would look like a number)."""
    tag = hashlib.sha1(f"commit {i}".encode()).hexdigest()[:12]  # noqa: S324 - a made-up commit id
    assert not tag.isdigit()
    return tag


COMMIT_TAGS = [commit_tag(i) for i in range(COMMITS)]
NEWEST = COMMIT_TAGS[-KEEP:]
GONE = [t for i, t in enumerate(COMMIT_TAGS[:-KEEP]) if i != IN_USE]


class Retention(Ops):
    """The operations fixture's stack, under a stack name of its own."""

    def tags(self, repo: str = REPO) -> list[str]:
        return sorted(self.api_json(f"/v2/{repo}/tags/list").get("tags") or [])

    def data_kib(self) -> int:
        return int(self.sh(f"du -sk {DATA}/docker | cut -f1"))

    def blob_count(self) -> int:
        return int(self.sh(f"find {BLOBS} -name data -type f | wc -l"))

    def manifest_status(self, repo: str, digest: str) -> str:
        """HTTP status of a HEAD for a manifest or index, accepting every type (an index not asked for is a 404)."""
        config = curl_user_line(self.exports["pushUsername"], self.exports["pushPassword"]) + "\n"
        accept = q("Accept: " + ", ".join(retention.MANIFEST_TYPES))
        return self.sh(
            f"curl -sS -K - -I -H {accept} -o /dev/null -w '%{{http_code}}' --cacert {CERT_DIR}/ca.crt "
            f"https://{q(self.clients.domain)}/v2/{q(repo)}/manifests/{q(digest)}",
            stdin=config,
        ).strip()

    def blob_status(self, digest: str) -> str:
        return self.sh(f"test -f {BLOBS}/sha256/{digest[7:9]}/{digest[7:]}/data && echo present || echo absent").strip()


@dataclass
class Images:
    digests: dict[str, str]
    """tag -> manifest digest."""
    layers: dict[str, str]
    """tag -> its (only) layer digest."""


@pytest.fixture(scope="module")
def ret(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retention]:
    config: dict[str, Any] = stack_config(testhost, flux="false", gcSchedule=NEVER, backupSchedule=NEVER, retention="true")
    config["retentionRules"] = [f"{REPO}={KEEP}", f"{MULTI}=1"]
    r: Retention = Retention.open(engine, STACK, testhost, tmp_path_factory.mktemp("retention-project"), config)
    r.clients.trust_pebble()
    try:
        result = r.apply()
        assert result.ok, f"fresh up failed:\n{result.error}"
        yield r
    finally:
        r.cleanup()
        testhost.exec(
            f"docker rm -f registry >/dev/null 2>&1; rm -rf {DATA}/docker {BACKUPS} {MAINTENANCE_FLAG} /root/e2e/ret-*; "
            "docker images -q 'e2e/ret-*' | xargs -r docker rmi -f >/dev/null 2>&1",
            check=False,
        )


@pytest.fixture(scope="module")
def images(ret: Retention) -> Images:
    """The semver images first (the oldest), then the commits oldest to newest; pushed newest first."""
    auth = ret.push_authfile()
    names = [f"semver-{i}" for i in range(len(SEMVER))] + [f"c{i:02d}" for i in range(COMMITS)]
    build = " ".join(q(n) for n in names)
    # One distinct random layer each (random data does not compress), created one after the other.
    ret.sh(
        f"for n in {build}; do d=$(mktemp -d); head -c {LAYER_KIB * 1024} /dev/urandom > \"$d/$n.bin\"; "
        f"tar -C \"$d\" -c . | docker import - \"e2e/ret-$n:1\" >/dev/null; rm -rf \"$d\"; done"
    )
    refs = [(f"e2e/ret-semver-{i}:1", tag) for i, tag in enumerate(SEMVER)]
    refs += [(f"e2e/ret-c{i:02d}:1", tag) for i, tag in enumerate(COMMIT_TAGS)]
    pushes = " ".join(q(f"{local}={tag}") for local, tag in reversed(refs))
    ret.sh(
        f"for p in {pushes}; do skopeo copy --quiet --dest-cert-dir {CERT_DIR} --dest-authfile {q(auth)} "
        f"\"docker-daemon:${{p%%=*}}\" \"docker://{ret.clients.domain}/{REPO}:${{p#*=}}\"; done"
    )
    digests, layers = {}, {}
    for _, tag in refs:
        manifest = ret.api_json(f"/v2/{REPO}/manifests/{tag}")
        layers[tag] = manifest["layers"][0]["digest"]
        digests[tag] = ret.clients.digest(f"{REPO}:{tag}", auth)
    return Images(digests, layers)


@pytest.fixture(scope="module")
def multi(ret: Retention) -> dict[str, dict[str, Any]]:
    """tag -> {index, children, layers} of the two indexes in MULTI."""
    pushed: dict[str, dict[str, Any]] = json.loads(ret.sh(f"python3 - {MULTI}", stdin=MAKE_INDEXES))
    return pushed


def test_the_images_are_pushed_newest_first_so_push_order_is_not_age(ret: Retention, images: Images) -> None:
    assert ret.tags() == sorted([*COMMIT_TAGS, *SEMVER])
    assert len(set(images.layers.values())) == COMMITS + len(SEMVER)
    link = f"{DATA}/docker/registry/v2/repositories/{REPO}/_manifests/tags/{{}}/current/link"
    pushed = {t: float(ret.sh(f"stat -c %Y {q(link.format(t))}")) for t in (COMMIT_TAGS[0], COMMIT_TAGS[-1])}
    assert pushed[COMMIT_TAGS[0]] >= pushed[COMMIT_TAGS[-1]]  # the oldest image was pushed last


def test_k3s_lists_the_old_tag_it_pulled_with_its_digest(ret: Retention, images: Images) -> None:
    in_use = COMMIT_TAGS[IN_USE]
    pulled = ret.clients.k3s_pull(f"{REPO}:{in_use}")
    assert images.digests[in_use] in pulled.stdout
    listing = json.loads(ret.sh("k3s crictl images -o json"))["images"]
    ref = f"{ret.clients.domain}/{REPO}"
    [entry] = [i for i in listing if f"{ref}:{in_use}" in i["repoTags"]]
    assert entry["repoDigests"] == [f"{ref}@{images.digests[in_use]}"]
    assert entry["id"].startswith("sha256:") and int(entry["size"]) > LAYER_KIB * 1024
    table = ret.sh("k3s crictl images --digests").splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE"]
    assert any(line.split()[:3] == [ref, in_use, images.digests[in_use][7:20]] for line in table[1:])


def test_dry_run_lists_what_would_go_and_changes_nothing(ret: Retention, images: Images, multi: dict[str, Any]) -> None:
    before = (ret.tags(), ret.tags(MULTI), ret.data_kib(), ret.blob_count(), ret.tags("ops/verify-probe"))
    out = ret.maintenance("retention --dry-run")
    would = re.findall(rf"would delete {re.escape(REPO)}:(\S+) \((sha256:[0-9a-f]+),", out)
    assert sorted(would) == sorted((t, images.digests[t]) for t in GONE), out
    assert f"kept {REPO}:{COMMIT_TAGS[IN_USE]} ({images.digests[COMMIT_TAGS[IN_USE]]}): in use on a k3s node" in out
    assert f"{REPO}: {COMMITS + len(SEMVER)} tags, keeping {KEEP + len(SEMVER) + 1}, would delete {len(GONE)}" in out
    old = multi["multi-old"]
    assert f"would delete {MULTI}:multi-old ({old['index']}, created 2021-01-01T00:00:00Z" in out
    for child in old["children"]:
        assert f"would delete {MULTI}@{child}: a platform manifest of a deleted index" in out
    assert not any(child in out for child in multi["multi-new"]["children"])
    assert (ret.tags(), ret.tags(MULTI), ret.data_kib(), ret.blob_count(), ret.tags("ops/verify-probe")) == before
    assert not ret.read_only()
    assert ret.sh(f"test -e {MAINTENANCE_FLAG} && echo flag || echo none").strip() == "none"
    assert "tag retention in the GC window: on" in ret.maintenance("status")


def test_gc_window_deletes_the_old_tags_and_reclaims_their_space(
    ret: Retention, images: Images, multi: dict[str, Any]
) -> None:
    before_kib, before_blobs = ret.data_kib(), ret.blob_count()
    since = ret.clients.now()
    gc = ret.host.ssh("sudo -n systemctl start registry-gc.service", check=False, timeout=600)
    assert gc.returncode == 0, gc.stderr
    journal = ret.clients.journal("registry-gc.service", since)

    assert ret.tags() == sorted([*NEWEST, COMMIT_TAGS[IN_USE], *SEMVER])
    assert ret.tags("ops/verify-probe") == ["v1"]  # no rule matches it: untouched
    deleted = re.findall(rf"registry-maintenance: retention: deleted {re.escape(REPO)}:(\S+) \((sha256:[0-9a-f]+),", journal)
    assert sorted(deleted) == sorted((t, images.digests[t]) for t in GONE), journal
    # Deletes while Caddy refuses pushes but before the registry goes read-only, then the collection.
    first_delete = journal.index("retention: deleted")
    assert journal.index("tag retention: pushes through the site get 503") < first_delete
    assert first_delete < journal.index("read-only window open for garbage collection")
    assert journal.index("read-only window open for garbage collection") < journal.index("collecting:")

    for tag in GONE:
        assert ret.manifest_status(REPO, images.digests[tag]) == "404", tag
        assert ret.blob_status(images.layers[tag]) == "absent", tag
    for tag in [*NEWEST, COMMIT_TAGS[IN_USE], *SEMVER]:
        assert ret.manifest_status(REPO, images.digests[tag]) == "200", tag
        assert ret.blob_status(images.layers[tag]) == "present", tag
    after_kib, after_blobs = ret.data_kib(), ret.blob_count()
    print(f"\nretention: {before_kib} KiB / {before_blobs} blobs -> {after_kib} KiB / {after_blobs} blobs")
    # Each image's manifest, config and layer; the old index, and its two platform images' manifest, config and layer.
    assert before_blobs - after_blobs == 3 * len(GONE) + 1 + 2 * 3
    assert before_kib - after_kib >= len(GONE) * LAYER_KIB * 0.9
    assert "garbage collection done" in journal and not ret.read_only()

    assert ret.tags(MULTI) == ["multi-new"]
    old, new = multi["multi-old"], multi["multi-new"]
    assert [ret.manifest_status(MULTI, d) for d in [old["index"], *old["children"]]] == ["404"] * 3
    assert [ret.manifest_status(MULTI, d) for d in [new["index"], *new["children"]]] == ["200"] * 3
    assert [ret.blob_status(d) for d in old["layers"] + new["layers"]] == ["absent"] * 2 + ["present"] * 2
    auth = ret.push_authfile()
    assert ret.fetch_all([f"{REPO}:{t}" for t in [*NEWEST, COMMIT_TAGS[IN_USE], *SEMVER]], auth) == []
    assert "Image is up to date" in ret.clients.k3s_pull(f"{REPO}:{COMMIT_TAGS[IN_USE]}").stdout


def test_a_second_window_deletes_nothing_more(ret: Retention) -> None:
    tags = ret.tags()
    out = ret.maintenance("gc")
    assert "retention: deleted 0 tags (0 manifests)" in out
    assert ret.tags() == tags


def test_pushes_work_again_after_the_window(ret: Retention) -> None:
    auth = ret.push_authfile()
    ret.clients.push(ret.clients.make_image("ret-after"), f"{REPO}:after", auth)
    assert "after" in ret.tags()
