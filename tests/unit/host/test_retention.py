"""host/usr/local/lib/registry-maintenance/retention.py as plain functions: which tags stay and what gets deleted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from renderers.retention_config import (
    retention_script,
)
from tests.unit.support import DEFAULT_KEEP, Policy, Rule, retention

Tag = retention.Tag


parse_created = retention.parse_created


parse_crictl_images = retention.parse_crictl_images


plan_repository = retention.plan_repository


DAY = 86400.0


T0 = 1_780_000_000.0  # 2026


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def commit_tags(count: int) -> list[Tag]:
    """Per-commit tags: c00 oldest ... c{count-1} newest, each its own image."""
    return [Tag(f"c{i:02d}", digest(f"c{i:02d}"), created=T0 + i * DAY, pushed=T0 + i * DAY + 60) for i in range(count)]


def policy(keep: int = 5, pattern: str = "*", **kw: Any) -> Policy:
    return Policy(rules=(Rule(pattern, keep),), keep_tags=kw.pop("keep_tags", DEFAULT_KEEP), **kw)


def kept(plan: retention.Plan) -> list[str]:
    return sorted(d.tag.name for d in plan.decisions if not d.delete)


def deleted(plan: retention.Plan) -> list[str]:
    return sorted(d.tag.name for d in plan.decisions if d.delete)


def test_keeps_the_newest_n_semver_tags_and_what_k3s_runs() -> None:
    semver = [Tag(t, digest(t), created=T0 - 100 * DAY) for t in ("v1.0.0", "1.1.0", "2.0.0-rc.1")]
    tags = commit_tags(30) + semver
    plan = plan_repository("ruby-demo-app", tags, policy(5), in_use=frozenset({digest("c03")}))
    assert kept(plan) == sorted(["c25", "c26", "c27", "c28", "c29", "c03", "v1.0.0", "1.1.0", "2.0.0-rc.1"])
    assert len(deleted(plan)) == 24
    assert set(plan.deletions) == {digest(f"c{i:02d}") for i in range(25) if i != 3}
    reasons = {d.tag.name: d.reason for d in plan.decisions}
    assert reasons["c03"] == "in use on a k3s node"
    assert reasons["v1.0.0"].startswith("matches the keep pattern")
    assert reasons["c29"] == "one of the newest 5"
    assert reasons["c00"] == "older than the newest 5"


def test_creation_time_orders_tags_not_push_time() -> None:
    # Pushed in reverse order of creation: the newest images were pushed first.
    tags = [Tag(f"c{i}", digest(f"c{i}"), created=T0 + i * DAY, pushed=T0 + (10 - i) * DAY) for i in range(10)]
    plan = plan_repository("app", tags, policy(3))
    assert kept(plan) == ["c7", "c8", "c9"]


@pytest.mark.parametrize("created", [None, 0.0, 315532800.0], ids=["missing", "epoch", "1980 (buildpacks)"])
def test_push_time_orders_images_without_a_real_creation_time(created: float | None) -> None:
    tags = [Tag(f"c{i}", digest(f"c{i}"), created=created, pushed=T0 + i * DAY) for i in range(6)]
    assert kept(plan_repository("app", tags, policy(2))) == ["c4", "c5"]


def test_mixed_dated_and_undated_tags_sort_on_one_time_line() -> None:
    tags = [
        Tag("old-dated", digest("a"), created=T0, pushed=T0 + 9 * DAY),
        Tag("new-undated", digest("b"), created=None, pushed=T0 + 5 * DAY),
        Tag("newest-dated", digest("c"), created=T0 + 6 * DAY, pushed=T0 + 6 * DAY),
    ]
    assert kept(plan_repository("app", tags, policy(2))) == ["new-undated", "newest-dated"]


def test_a_tag_that_cannot_be_dated_is_never_deleted_for_being_old() -> None:
    tags = [*commit_tags(3), Tag("mystery", digest("m"))]
    plan = plan_repository("app", tags, policy(1))
    assert kept(plan) == ["mystery"]
    assert {d.tag.name: d.reason for d in plan.decisions}["mystery"] == "has no creation or push time"


def test_kept_pattern_tags_do_not_count_towards_n() -> None:
    tags = [*commit_tags(4), Tag("latest", digest("c03")), Tag("v2.0", digest("v2"), created=T0 + 99 * DAY)]
    plan = plan_repository("app", tags, policy(2))
    assert kept(plan) == ["c02", "c03", "latest", "v2.0"]


@pytest.mark.parametrize(
    ("tag", "is_kept"),
    [
        ("v1.2.3", True), ("1.2.3", True), ("1.2", True), ("2.0.0-rc.1", True), ("1.0.0+build.7", True),
        ("latest", True), ("v1", False), ("latest-dev", False), ("0123abcd4567", False), ("123456789012", False),
        ("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", False), ("main", False), ("1.2.3.4.5", False),
    ],
)
def test_default_keep_patterns_match_semver_and_latest_but_no_commit_tag(tag: str, is_kept: bool) -> None:
    older = Tag(tag, digest(tag), created=T0 - DAY)  # older than the one tag N=1 keeps: only a pattern saves it
    plan = plan_repository("app", [older, Tag("new", digest("new"), created=T0 + DAY)], policy(1))
    assert (tag in kept(plan)) is is_kept


def test_a_digest_that_a_kept_tag_also_points_at_is_never_deleted() -> None:
    # An older push of the manifest the newest tag points at, under another tag.
    tags = [*commit_tags(4), Tag("old-alias", digest("c03"), created=T0 + 3 * DAY, pushed=T0 - 10 * DAY)]
    plan = plan_repository("app", tags, policy(1))
    assert "old-alias" in kept(plan)
    assert {d.tag.name: d.reason for d in plan.decisions}["old-alias"] == "its manifest is also that of a kept tag"
    assert digest("c03") not in plan.deletions


def test_two_old_tags_on_one_manifest_go_with_one_delete() -> None:
    tags = [*commit_tags(3), Tag("c00-alias", digest("c00"), created=T0, pushed=T0)]
    plan = plan_repository("app", tags, policy(1))
    assert sorted(deleted(plan)) == ["c00", "c00-alias", "c01"]
    assert plan.deletions.count(digest("c00")) == 1


def test_protected_digests_stay() -> None:
    plan = plan_repository("app", commit_tags(5), policy(1, protect=frozenset({digest("c01")})))
    assert kept(plan) == ["c01", "c04"]
    assert {d.tag.name: d.reason for d in plan.decisions}["c01"] == "listed in retentionProtect"


def test_repositories_no_rule_matches_are_left_alone() -> None:
    plan = plan_repository("other/app", commit_tags(20), policy(1, pattern="team/*"))
    assert deleted(plan) == [] and plan.deletions == ()


def test_first_matching_rule_wins_and_globs_cross_slashes() -> None:
    rules = Policy(rules=(Rule("team/api", 3), Rule("team/*", 1), Rule("*", 10)), keep_tags=())
    assert rules.rule_for("team/api") == Rule("team/api", 3)
    assert rules.rule_for("team/web") == Rule("team/*", 1)
    assert rules.rule_for("team/sub/web") == Rule("team/*", 1)
    assert rules.rule_for("ruby-demo-app") == Rule("*", 10)
    assert len(kept(plan_repository("team/web", commit_tags(5), rules))) == 1


def test_children_of_a_kept_index_stay_and_those_of_a_deleted_index_go_after_it() -> None:
    tags = [Tag(f"c{i}", digest(f"index{i}"), created=T0 + i * DAY) for i in range(3)]
    children = {digest(f"index{i}"): [digest(f"amd64-{i}"), digest(f"arm64-{i}")] for i in range(3)}
    children[digest("index0")].append(digest("arm64-2"))  # a platform image the kept index shares
    plan = plan_repository("app", tags, policy(1), children=children)
    assert kept(plan) == ["c2"]
    assert plan.deletions[:2] == (digest("index1"), digest("index0"))  # newest first, every index before its children
    assert set(plan.deletions[2:]) == {digest("amd64-0"), digest("arm64-0"), digest("amd64-1"), digest("arm64-1")}
    assert digest("arm64-2") not in plan.deletions and digest("amd64-2") not in plan.deletions


def test_an_old_index_is_deleted_before_an_old_tag_on_one_of_its_platform_manifests() -> None:
    tags = [
        Tag("new", digest("new"), created=T0 + 2 * DAY),
        Tag("amd64-old", digest("amd64"), created=T0 + DAY),
        Tag("multi-old", digest("index"), created=T0),
    ]
    plan = plan_repository("app", tags, policy(1), children={digest("index"): [digest("amd64"), digest("arm64")]})
    assert plan.deletions == (digest("index"), digest("amd64"), digest("arm64"))
    assert deleted(plan) == ["amd64-old", "multi-old"]


def test_an_index_k3s_runs_keeps_its_children_even_when_another_deleted_index_shares_them() -> None:
    tags = [Tag("new", digest("new"), created=T0 + DAY), Tag("old", digest("oldindex"), created=T0)]
    children = {digest("oldindex"): [digest("shared")], digest("running"): [digest("shared")]}
    plan = plan_repository("app", tags, policy(1), in_use=frozenset({digest("running")}), children=children)
    assert plan.deletions == (digest("oldindex"),)


def test_a_tag_on_a_platform_manifest_of_a_kept_index_is_kept() -> None:
    tags = [Tag("multi", digest("index"), created=T0 + DAY), Tag("amd64-only", digest("amd64"), created=T0)]
    plan = plan_repository("app", tags, policy(1), children={digest("index"): [digest("amd64")]})
    assert kept(plan) == ["amd64-only", "multi"] and plan.deletions == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T08:00:00Z", 1796112000.0),
        ("2026-12-01T08:00:00.5Z", 1796112000.5),
        ("2026-12-01T08:00:00.123456789Z", 1796112000.123456789),
        ("2026-12-01T10:00:00+02:00", 1796112000.0),
        ("2026-12-01T03:30:00-04:30", 1796112000.0),
        ("1970-01-01T00:00:00Z", 0.0),
        ("2026-13-01T08:00:00Z", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1796112000, None),
    ],
)
def test_parse_created(text: object, expected: float | None) -> None:
    got = parse_created(text)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == pytest.approx(expected, abs=1e-6)


CRICTL_JSON = {
    "images": [
        {
            "id": "sha256:" + "c" * 64,
            "repoTags": ["registry.example.com/ruby-demo-app:0123abcd4567"],
            "repoDigests": ["registry.example.com/ruby-demo-app@sha256:" + "a" * 64],
            "size": "2155530", "uid": None, "username": "", "spec": None, "pinned": False,
        },
        {
            "id": "sha256:" + "d" * 64, "repoTags": [], "repoDigests": ["docker.io/rancher/mirrored-pause@sha256:" + "b" * 64],
            "size": "321520", "uid": {"value": "65535"}, "username": "", "spec": None, "pinned": True,
        },
    ]
}


def test_parse_crictl_images_takes_repo_digests_and_image_ids() -> None:
    assert parse_crictl_images(json.dumps(CRICTL_JSON)) == {
        "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64, "sha256:" + "d" * 64,
    }
    assert parse_crictl_images('{"images": []}') == frozenset()


def test_the_shipped_program_runs_under_the_host_python_alone(tmp_path: Path) -> None:
    # No import from this repository: the host has only the one file.
    (tmp_path / "retention.py").write_text(retention_script())
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "retention.py"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout
    imports = re.findall(r"^(?:from|import) (\S+)", retention_script(), re.M)
    assert not [m for m in imports if m.split(".")[0] in ("components", "pulumi", "yaml", "tests")]
