"""Tag retention, run on the host by `registry-maintenance` (shipped there verbatim: python3, standard library only).

`plan_repository` decides which tags go and which manifests to delete (pure, unit-tested); the rest reads the
registry on loopback, the tags' push times from its storage and the images k3s holds, and deletes by digest.
"""

from __future__ import annotations

import argparse
import calendar
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
CREATED_ANNOTATION = "org.opencontainers.image.created"
DATED_AFTER = 946684800.0
"""2000-01-01: an earlier `created` is one that reproducible builds pin (0 or 1980), not a real date; push time counts."""
SAY = "registry-maintenance: retention:"


# --- the policy and the decision (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    repositories: str
    """Glob over repository names (`*` matches across `/` too)."""
    keep: int
    """How many of the newest tags (not counting those kept by pattern) stay."""


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    """First matching rule wins; a repository no rule matches is left alone."""
    keep_tags: tuple[str, ...]
    """Regular expressions (whole-tag match): such tags always stay and do not count towards `keep`."""
    protect: frozenset[str] = frozenset()
    """Manifest or config digests never deleted (images other machines run)."""

    def rule_for(self, repository: str) -> Rule | None:
        return next((r for r in self.rules if fnmatch.fnmatchcase(repository, r.repositories)), None)


@dataclass(frozen=True)
class Tag:
    name: str
    digest: str
    """The manifest (or index) digest the tag points at."""
    created: float | None = None
    """The image's creation time (config `created`), seconds since the epoch."""
    pushed: float | None = None
    """When the tag was last pushed (its link file in the registry's storage)."""

    @property
    def when(self) -> float | None:
        """What orders tags: the creation time, or the push time where it is missing or pinned."""
        if self.created is not None and self.created >= DATED_AFTER:
            return self.created
        return self.pushed


@dataclass(frozen=True)
class Decision:
    tag: Tag
    delete: bool
    reason: str
    guarded: bool = False
    """Old enough to go, but something still needs its manifest."""


@dataclass(frozen=True)
class Plan:
    repository: str
    decisions: tuple[Decision, ...]
    """One per tag, newest first."""
    deletions: tuple[str, ...] = ()
    """Manifest digests to DELETE, each index before its children."""

    @property
    def deleted(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.delete)


def _newest_first(tag: Tag) -> tuple[float, float, str]:
    # A tag that cannot be dated sorts as the newest: it is never deleted for being old.
    when = tag.when if tag.when is not None else math.inf
    pushed = tag.pushed if tag.pushed is not None else math.inf
    return (when, pushed, tag.name)


def closure(roots: Iterable[str], children: Mapping[str, Sequence[str]]) -> set[str]:
    """The digests and everything they reference (an index's platform manifests), transitively."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        digest = stack.pop()
        if digest not in seen:
            seen.add(digest)
            stack.extend(children.get(digest, ()))
    return seen


def plan_repository(
    repository: str,
    tags: Sequence[Tag],
    policy: Policy,
    in_use: frozenset[str] = frozenset(),
    children: Mapping[str, Sequence[str]] | None = None,
) -> Plan:
    """Which tags of one repository go, and the manifests to delete for them.

    Never deleted: a digest a kept tag points at (or that a kept index references), one in `in_use` (the digests
    k3s holds) or in the policy's `protect`, and anything those reference.
    """
    children = children or {}
    ordered = sorted(tags, key=_newest_first, reverse=True)
    rule = policy.rule_for(repository)
    if rule is None:
        return Plan(repository, tuple(Decision(t, False, "no retention rule matches the repository") for t in ordered))
    patterns = [re.compile(p) for p in policy.keep_tags]
    reasons: dict[str, str] = {}
    candidates: list[Tag] = []
    counted = 0
    for tag in ordered:
        pattern = next((p.pattern for p in patterns if p.fullmatch(tag.name)), None)
        if pattern is not None:
            reasons[tag.name] = f"matches the keep pattern {pattern}"
        elif counted < rule.keep:
            counted += 1
            reasons[tag.name] = (
                f"one of the newest {rule.keep}" if tag.when is not None else "has no creation or push time"
            )
        else:
            candidates.append(tag)
    kept = closure((t.digest for t in ordered if t.name in reasons), children)
    used = closure(in_use, children)
    protected = closure(policy.protect, children)
    doomed: list[str] = []
    guards: set[str] = set()
    for tag in candidates:
        if tag.digest in used:
            reasons[tag.name] = "in use on a k3s node"
        elif tag.digest in protected:
            reasons[tag.name] = "listed in retentionProtect"
        elif tag.digest in kept:
            reasons[tag.name] = "its manifest is also that of a kept tag"
        elif tag.digest not in doomed:
            doomed.append(tag.digest)
        if tag.name in reasons:
            guards.add(tag.name)
    guarded = kept | used | protected
    doomed.sort(key=lambda d: d not in children)  # indexes first (stable): none is left pointing at a deleted child
    deletions = list(doomed)
    for digest in doomed:  # the platform manifests of a deleted index go too, unless something kept needs them
        for child in sorted(closure([digest], children) - {digest}):
            if child not in guarded and child not in deletions:
                deletions.append(child)
    decisions = tuple(
        Decision(t, t.name not in reasons, reasons.get(t.name, f"older than the newest {rule.keep}"), t.name in guards)
        for t in ordered
    )
    return Plan(repository, decisions, tuple(deletions))


_CREATED_RE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def parse_created(value: object) -> float | None:
    """An RFC 3339 time (as in an image config's `created`, nanoseconds allowed) in epoch seconds; None if not one."""
    if not isinstance(value, str):
        return None
    m = _CREATED_RE.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (OverflowError, ValueError):
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    fraction = float("0." + m.group(7)) if m.group(7) else 0.0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds + fraction


def parse_crictl_images(text: str) -> frozenset[str]:
    """The digests in `crictl images -o json`: every repo digest (manifest or index) and every image id (config)."""
    digests: set[str] = set()
    for image in json.loads(text).get("images") or []:
        for ref in image.get("repoDigests") or []:
            if "@" in ref:
                digests.add(ref.rsplit("@", 1)[1])
        if str(image.get("id") or "").startswith("sha256:"):
            digests.add(image["id"])
    return frozenset(digests)


def load_policy(config: Mapping[str, Any]) -> Policy:
    return Policy(
        rules=tuple(Rule(str(r["repositories"]), int(r["keep"])) for r in config.get("rules") or []),
        keep_tags=tuple(str(p) for p in config.get("keep_tags") or []),
        protect=frozenset(str(d) for d in config.get("protect") or []),
    )


# --- the host: registry API on loopback, storage, k3s ------------------------------------------------------------


class RegistryError(RuntimeError):
    pass


@dataclass
class Manifest:
    digest: str
    media_type: str
    document: dict[str, Any]

    @property
    def children(self) -> list[str]:
        if self.media_type in INDEX_TYPES or "manifests" in self.document:
            return [str(m["digest"]) for m in self.document.get("manifests") or []]
        return []

    @property
    def config_digest(self) -> str | None:
        config = self.document.get("config")
        return str(config["digest"]) if isinstance(config, dict) and "digest" in config else None


@dataclass
class Registry:
    """The registry's HTTP API, straight on loopback (no Caddy: its maintenance answer would refuse the deletes)."""

    base: str
    timeout: float = 60.0
    _blobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _manifests: dict[tuple[str, str], Manifest | None] = field(default_factory=dict)

    def request(self, method: str, path: str, accept: str | None = None) -> tuple[int, Mapping[str, str], bytes]:
        req = urllib.request.Request(self.base + path, method=method)  # noqa: S310 - http://127.0.0.1 only
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()
        except OSError as exc:
            raise RegistryError(f"{method} {self.base}{path}: {exc}") from None

    def _paged(self, path: str, key: str) -> list[str]:
        items: list[str] = []
        next_path: str | None = path
        while next_path:
            status, headers, body = self.request("GET", next_path)
            if status == 404:
                return items
            if status != 200:
                raise RegistryError(f"GET {next_path}: HTTP {status}: {body[:200]!r}")
            items += json.loads(body).get(key) or []
            link = next((v for k, v in headers.items() if k.lower() == "link"), "")
            m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
            next_path = m.group(1) if m else None
        return items

    def repositories(self) -> list[str]:
        return self._paged("/v2/_catalog?n=1000", "repositories")

    def tags(self, repository: str) -> list[str]:
        return self._paged(f"/v2/{repository}/tags/list?n=1000", "tags")

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        key = (repository, reference)
        if key not in self._manifests:
            status, headers, body = self.request(
                "GET", f"/v2/{repository}/manifests/{urllib.parse.quote(reference, safe=':')}", ", ".join(MANIFEST_TYPES)
            )
            if status == 404:
                self._manifests[key] = None
            elif status != 200:
                raise RegistryError(f"GET manifest {repository}:{reference}: HTTP {status}: {body[:200]!r}")
            else:
                header = {k.lower(): v for k, v in headers.items()}
                digest = header.get("docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()
                document = json.loads(body)
                media_type = str(document.get("mediaType") or header.get("content-type", "").split(";")[0])
                self._manifests[key] = Manifest(digest, media_type, document)
        return self._manifests[key]

    def blob_json(self, repository: str, digest: str) -> dict[str, Any]:
        if digest not in self._blobs:
            status, _, body = self.request("GET", f"/v2/{repository}/blobs/{digest}")
            if status != 200:
                raise RegistryError(f"GET blob {repository}@{digest}: HTTP {status}")
            self._blobs[digest] = json.loads(body)
        return self._blobs[digest]

    def delete_manifest(self, repository: str, digest: str) -> int:
        status, _, body = self.request("DELETE", f"/v2/{repository}/manifests/{digest}")
        if status not in (202, 404):
            raise RegistryError(f"DELETE {repository}@{digest}: HTTP {status}: {body[:300]!r}")
        return status


def tag_link_mtime(data_dir: str, repository: str, tag: str) -> float | None:
    """When the tag was last pushed: the mtime of the link the registry rewrites on every push of it."""
    path = os.path.join(
        data_dir, "docker/registry/v2/repositories", repository, "_manifests/tags", tag, "current/link"
    )
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def is_revision(data_dir: str, repository: str, digest: str) -> bool:
    """Whether the repository holds a manifest with this digest (its revision link in the registry's storage)."""
    algorithm, _, hexdigest = digest.partition(":")
    if not re.fullmatch(r"[a-z0-9]+", algorithm) or not re.fullmatch(r"[a-f0-9]{32,128}", hexdigest):
        return False
    path = os.path.join(
        data_dir, "docker/registry/v2/repositories", repository, "_manifests/revisions", algorithm, hexdigest, "link"
    )
    return os.path.isfile(path)


def k3s_images(mode: str) -> tuple[frozenset[str], str]:
    """(digests k3s holds, how we know); mode `required` fails if it cannot tell, `if-present` skips a host without k3s."""
    if shutil.which("k3s") is None:
        if mode == "required":
            raise RegistryError("k3s is not installed here, so the images in use cannot be known; nothing deleted")
        return frozenset(), "no k3s on this host"
    result = subprocess.run(  # noqa: S603
        ["k3s", "crictl", "images", "-o", "json"], capture_output=True, text=True, check=False, timeout=120  # noqa: S607
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RegistryError(f"k3s crictl images failed ({detail[0]}): the images in use are unknown; nothing deleted")
    digests = parse_crictl_images(result.stdout)
    return digests, f"{len(digests)} digests held by this k3s node"


def _stamp(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds is not None else "unknown"


def _created(registry: Registry, repository: str, manifest: Manifest) -> float | None:
    """The image's creation time; for an index, its created annotation or its newest platform image's."""
    if manifest.children:
        annotated = parse_created((manifest.document.get("annotations") or {}).get(CREATED_ANNOTATION))
        if annotated is not None:
            return annotated
        times = []
        for child in manifest.children:
            sub = registry.manifest(repository, child)
            if sub is not None and sub.config_digest:
                times.append(parse_created(registry.blob_json(repository, sub.config_digest).get("created")))
        dated = [t for t in times if t is not None]
        return max(dated) if dated else None
    if manifest.config_digest:
        return parse_created(registry.blob_json(repository, manifest.config_digest).get("created"))
    return None


def survey(
    registry: Registry, data_dir: str, repository: str, in_use: frozenset[str]
) -> tuple[list[Tag], dict[str, list[str]], frozenset[str]]:
    """A repository's tags with their times, the index -> children map, and the in-use digests found in it."""
    tags: list[Tag] = []
    children: dict[str, list[str]] = {}
    used = set(in_use)
    manifests: list[Manifest] = []
    for name in registry.tags(repository):
        manifest = registry.manifest(repository, name)
        if manifest is None:  # deleted since the listing
            continue
        manifests.append(manifest)
        tags.append(Tag(name, manifest.digest, _created(registry, repository, manifest), tag_link_mtime(data_dir, repository, name)))
    # In-use images pulled by digest may be untagged indexes here: their children must be known to stay guarded.
    # Only digests this repository holds as manifests are asked for (a config digest would get a 500).
    for digest in sorted(in_use):
        if is_revision(data_dir, repository, digest):
            manifest = registry.manifest(repository, digest)
            if manifest is not None:
                manifests.append(manifest)
    for manifest in manifests:
        if manifest.children:
            children[manifest.digest] = manifest.children
            for child in manifest.children:
                sub = registry.manifest(repository, child)
                if sub is not None and sub.config_digest in in_use:
                    used.add(sub.digest)
        elif manifest.config_digest in in_use:  # held by k3s under another name: the same image
            used.add(manifest.digest)
    return tags, children, frozenset(used)


def run(config: Mapping[str, Any], dry_run: bool, out: Any = sys.stdout) -> int:
    def say(line: str) -> None:
        print(f"{SAY} {line}", file=out, flush=True)

    policy = load_policy(config)
    verb = "would delete" if dry_run else "deleted"
    if dry_run and not config.get("enabled"):
        say("retention is off (retention=false): garbage collection deletes no tag; with it on, this is what would go")
    rules = ", ".join(f"{r.repositories}={r.keep}" for r in policy.rules) or "none"
    say(f"rules {rules}; always kept: tags matching {' or '.join(policy.keep_tags) or 'nothing'}")
    registry = Registry(str(config["registry"]))
    try:
        in_use, source = k3s_images(str(config.get("k3s") or "if-present"))
        repositories = registry.repositories()
    except RegistryError as exc:
        say(f"FAILED: {exc}")
        return 1
    say(f"in use: {source}; protected by retentionProtect: {len(policy.protect)}")
    failures = 0
    total_tags = total_manifests = 0
    ignored = set(config.get("ignore_repositories") or [])
    for repository in repositories:
        if repository in ignored:
            say(f"{repository}: the deploy check's probe image, not an application image: left alone")
            continue
        if policy.rule_for(repository) is None:
            continue
        try:
            tags, children, used = survey(registry, str(config["data_dir"]), repository, in_use)
        except (RegistryError, ValueError, KeyError) as exc:
            say(f"FAILED: {repository}: {exc}; nothing deleted in it")
            failures += 1
            continue
        plan = plan_repository(repository, tags, policy, used, children)
        gone = plan.deleted
        say(f"{repository}: {len(tags)} tags, keeping {len(tags) - len(gone)}, {verb} {len(gone)}")
        for decision in plan.decisions:
            if decision.guarded:
                say(f"kept {repository}:{decision.tag.name} ({decision.tag.digest}): {decision.reason}")
        tagged: dict[str, list[Decision]] = {}
        for decision in gone:
            tagged.setdefault(decision.tag.digest, []).append(decision)
        for digest in plan.deletions:
            if not dry_run:
                try:
                    status = registry.delete_manifest(repository, digest)
                except RegistryError as exc:
                    say(f"FAILED: {exc}; the rest of {repository} is kept")
                    failures += 1
                    break
                if status == 404:
                    say(f"{repository}@{digest} was already gone")
            for decision in tagged.get(digest, []):
                tag = decision.tag
                say(
                    f"{verb} {repository}:{tag.name} ({digest}, created {_stamp(tag.created)}, "
                    f"pushed {_stamp(tag.pushed)}): {decision.reason}"
                )
                total_tags += 1
            if digest not in tagged:
                say(f"{verb} {repository}@{digest}: a platform manifest of a deleted index")
            total_manifests += 1
    say(f"{verb} {total_tags} tags ({total_manifests} manifests)" + (f"; {failures} failure(s)" if failures else ""))
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-maintenance retention", description=__doc__)
    parser.add_argument("config", help="the retention settings (JSON) the program installed")
    parser.add_argument("--dry-run", action="store_true", help="show what would be deleted; change nothing")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    return run(config, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
