"""Tag retention: which tags stay, what gets deleted, the settings, and its place in the GC window (graph under
Pulumi's mocks)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from components.registry import CONTAINER, ENV_FILE
from renderers import shipped
from renderers.maintenance_install import maintenance_install, maintenance_remove
from renderers.maintenance_script import MAINTENANCE_SCRIPT, MaintenanceSpec, render_maintenance_script
from renderers.retention_config import (
    RETENTION_CONFIG,
    RETENTION_SCRIPT,
    RetentionSpec,
    render_retention_config,
    retention_script,
)
from settings.load import parse_settings
from settings.model import SEMVER_TAG, ConfigError
from tests.unit.support import TYPICAL, Programs, shellcheck
from tests.unit.test_operations import _script, heredoc_files

if TYPE_CHECKING:  # the shipped files, by the names pyproject.toml's mypy_path gives them
    import retention
else:
    retention = shipped.module(shipped.RETENTION)

Policy = retention.Policy
Rule = retention.Rule
Tag = retention.Tag
parse_created = retention.parse_created
parse_crictl_images = retention.parse_crictl_images
plan_repository = retention.plan_repository

DEFAULT_KEEP = (SEMVER_TAG, "latest")
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


# --- which tags stay ---------------------------------------------------------------------------------------------


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


# --- multi-platform images ---------------------------------------------------------------------------------------


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


# --- parsing what the host reports -----------------------------------------------------------------------------


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


# --- settings -----------------------------------------------------------------------------------------------------


def test_retention_is_off_by_default_and_keeps_semver_and_latest() -> None:
    settings = parse_settings({"host": "192.0.2.1"})
    assert settings.retention is False
    assert settings.retention_rules == (("*", 10),)
    assert settings.retention_keep_tags == DEFAULT_KEEP
    assert settings.retention_protect == ()


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"retention": "true"}, "retention", True),
        ({"retentionRules": '["ruby-demo-app=5", "team/*=20", "*=100"]'}, "retention_rules", (("ruby-demo-app", 5), ("team/*", 20), ("*", 100))),
        ({"retentionRules": ["a?c=1"]}, "retention_rules", (("a?c", 1),)),
        ({"retentionKeepTags": '["release-.*", "stable"]'}, "retention_keep_tags", ("release-.*", "stable")),
        ({"retentionKeepTags": "[]"}, "retention_keep_tags", ()),
        ({"retentionProtect": json.dumps(["sha256:" + "0" * 64])}, "retention_protect", ("sha256:" + "0" * 64,)),
    ],
)
def test_retention_settings_accept(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_settings({"host": "192.0.2.1", **raw}), field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"retention": "on"}, "registry:retention = 'on' is invalid; accepted: true or false"),
        ({"retentionRules": '["app"]'}, "registry:retentionRules = '[\"app\"]' is invalid; accepted: a list of PATTERN=N"),
        ({"retentionRules": '["app=0"]'}, "(bad: 'app=0')"),
        ({"retentionRules": '["app=10001"]'}, "how many tags to keep (1-10000)"),
        ({"retentionRules": '["App=3"]'}, "(bad: 'App=3')"),
        ({"retentionRules": '["a;b=3"]'}, "(bad: 'a;b=3')"),
        ({"retentionRules": "[]"}, "registry:retentionRules = '[]' is invalid; accepted: a non-empty JSON list of PATTERN=N"),
        ({"retentionRules": "app=3"}, "accepted: a JSON list of PATTERN=N"),
        ({"retentionKeepTags": '["v[0-9"]'}, "registry:retentionKeepTags = '[\"v[0-9\"]' is invalid; accepted: a list of Python regular expressions"),
        ({"retentionKeepTags": '[""]'}, "(bad: '')"),
        ({"retentionProtect": '["sha256:abc"]'}, "registry:retentionProtect = '[\"sha256:abc\"]' is invalid; accepted: a list of digests such as sha256:<64 lower-case hex>"),
        ({"retentionProtect": json.dumps(["app@sha256:" + "0" * 64])}, "registry:retentionProtect"),
    ],
)
def test_retention_settings_reject(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"host": "192.0.2.1", **raw})
    assert message in str(info.value)


# --- the maintenance script and install --------------------------------------------------------------------------

SPEC = MaintenanceSpec(
    container=CONTAINER, image="registry:2.8.3", port=5000, data_dir="/srv/data/registry", env_file=ENV_FILE,
    backup_dir="/srv/backups/registry", backup_keep=7,
    retention=RetentionSpec(enabled=True, rules=(("*", 10),), keep_tags=DEFAULT_KEEP, k3s=True),
)



def _function(script: str, name: str) -> list[str]:
    body = script[script.index(f"{name}() {{") : script.index("\n}\n", script.index(f"{name}() {{"))]
    return [line.strip() for line in body.splitlines()]


def test_gc_deletes_tags_while_caddy_refuses_writes_and_before_the_registry_goes_read_only() -> None:
    steps = _function(render_maintenance_script(SPEC), "cmd_gc")
    order = [
        "take_lock",
        'refuse_writes "tag retention and garbage collection"',
        "retention || retention_failed=1",
        'open_window "garbage collection"',
        "collect --dry-run",
        "collect",
        "close_window",
    ]
    assert [steps.index(step) for step in order] == sorted(steps.index(step) for step in order)
    assert steps[-1].startswith('[ "$retention_failed" = 0 ] || die')


def test_retention_talks_to_the_registry_on_loopback_not_through_the_site() -> None:
    config = json.loads(render_retention_config(SPEC))
    assert config["registry"] == "http://127.0.0.1:5000"
    assert config == {
        "enabled": True, "registry": "http://127.0.0.1:5000", "data_dir": "/srv/data/registry",
        "rules": [{"repositories": "*", "keep": 10}], "keep_tags": list(DEFAULT_KEEP), "protect": [], "k3s": "required",
    }
    assert retention.load_policy(config) == Policy((Rule("*", 10),), DEFAULT_KEEP, frozenset())


def test_retention_is_skipped_in_gc_when_off_but_the_preview_stays() -> None:
    off = MaintenanceSpec(**{**SPEC.__dict__, "retention": RetentionSpec()})
    script = render_maintenance_script(off)
    assert "\nRETENTION=off\n" in script and "\nRETENTION=on\n" in render_maintenance_script(SPEC)
    assert "retention) shift; cmd_retention" in script
    assert json.loads(render_retention_config(off))["enabled"] is False
    assert json.loads(render_retention_config(off))["k3s"] == "if-present"


def test_retention_command_only_previews() -> None:
    steps = _function(render_maintenance_script(SPEC), "cmd_retention")
    assert steps[-1] == "retention --dry-run"
    assert not any("refuse_writes" in s or "open_window" in s for s in steps)


def test_install_ships_the_retention_program_verbatim_and_its_settings() -> None:
    files = heredoc_files(maintenance_install(SPEC, "Sun *-*-* 03:00:00", ""))
    assert files[RETENTION_SCRIPT] == shipped.text(shipped.RETENTION)
    assert files[RETENTION_CONFIG] == render_retention_config(SPEC)
    remove = maintenance_remove("/srv/backups/registry")
    removed = shlex.split(next(line for line in remove.splitlines() if line.startswith("rm ")))
    assert RETENTION_SCRIPT in removed and RETENTION_CONFIG in removed


def test_scripts_with_retention_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck(tmp_path, {
        "maintenance": render_maintenance_script(SPEC),
        "install": maintenance_install(SPEC, "Sun *-*-* 03:00:00", "*-*-* 02:30:00"),
    })


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


# --- the graph ---------------------------------------------------------------------------------------------------


def test_retention_settings_reach_the_host(programs: Programs) -> None:
    run = programs.ok({
        **TYPICAL, "retention": "true", "retentionRules": '["ruby-demo-app=5"]',
        "retentionProtect": json.dumps(["sha256:" + "1" * 64]),
    })
    files = heredoc_files(_script(run.named("maintenance-install")))
    config = json.loads(files[RETENTION_CONFIG])
    assert config["enabled"] is True and config["rules"] == [{"repositories": "ruby-demo-app", "keep": 5}]
    assert config["protect"] == ["sha256:" + "1" * 64] and config["k3s"] == "required"
    assert "\nRETENTION=on\n" in files[MAINTENANCE_SCRIPT]
    assert "python3 is not installed" in _script(run.named("host-preflight"))


def test_retention_off_still_installs_the_preview(programs: Programs) -> None:
    # (python3 is checked by preflight either way: the registries.yaml merge and the Caddy takeover need it too.)
    run = programs.ok(TYPICAL)
    files = heredoc_files(_script(run.named("maintenance-install")))
    assert json.loads(files[RETENTION_CONFIG])["enabled"] is False


def test_the_install_command_stays_well_under_the_kernels_single_argument_limit(programs: Programs) -> None:
    # The whole install (the retention program included) is one `sh -c` argument: Linux caps one at 128 KiB.
    command = programs.ok({**TYPICAL, "retention": "true"}).named("maintenance-install").value("create")
    assert len(command.encode()) < 96 * 1024
