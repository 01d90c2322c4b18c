"""An existing stack sees no change from the layout move: a stack made by the code before it (commit BEFORE_THE_MOVE,
from `git archive`) is previewed and updated by this checkout's code on the real engine, and nothing changes.

BEFORE_THE_MOVE also predates the `nodes` setting (issue 19): the single-node stack it made keeps its trust file and
k3s is not restarted by the upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import engine as eng_mod
from tests.e2e.clients import Clients, stack_config
from tests.e2e.engine import Engine
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
BEFORE_THE_MOVE = "4cca3a4"
"""The last commit before components/ was split into components/, renderers/, settings/ and host/ (issue 18)."""
CHANGED_SINCE_THE_MOVE: dict[str, str] = {
    "host-preflight": "issue 22: warns when backupDir shares dataDir's filesystem; issue 18: ships as host/steps/host/preflight.sh behind a header",
    "maintenance-install": "issue 22: backups check the free space first; status reports the last gc/retention/backup run",
}
"""Resource name -> why: a later commit that changes on purpose what a step sends to an existing stack lists the step
here; it may then show as an update, never as a create, delete or replacement."""
ADDED_SINCE_THE_MOVE: dict[str, str] = {
    name: "issue 20: the observers that let `pulumi refresh` read the host (created without running anything on it)"
    for name in ("caddy-site-state", "registry-state", "k3s-trust-state", "maintenance-state")
}
"""Resource name -> why: resources a later commit adds to every stack. They show as creations and nothing else."""


def _resource_changes(run: eng_mod.Run, resources: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    """What `run` changed, providers left out: a provider's inputs are the stack's config, so a setting added to
    Pulumi.yaml since (with its default) updates the provider in the state while no resource changes."""
    return {n: op for n, op in run.changed().items() if not resources.get(n, ("", None))[0].startswith("pulumi:providers:")}


def test_a_stack_made_before_the_move_sees_no_change(
    testhost: TestHost, engine: Engine, tmp_path: Path
) -> None:
    old_source = eng_mod.archive(BEFORE_THE_MOVE, tmp_path / "before")
    assert (old_source / "components" / "ops_render.py").exists()  # the old layout indeed
    assert not (old_source / "renderers").exists()
    project = eng_mod.make_project(tmp_path / "project", source=old_source)
    assert (project / "components").resolve() == (old_source / "components").resolve()
    clients = Clients(testhost)
    clients.trust_pebble()
    stack = eng_mod.Stack(engine, "upgrade", project, stack_config(testhost, flux="false"))
    try:
        made = stack.up()
        assert made.ok, made.error[-3000:]
        before = {name: (r["type"], r.get("parent")) for name, r in stack.resources().items()}
        assert len(before) >= 15, before
        k3s = (clients.starts(), clients.sha256(REGISTRIES_YAML))

        eng_mod.make_project(project, source=eng_mod.ROOT)  # the same stack, now this checkout's code
        assert (project / "components").resolve() == (eng_mod.ROOT / "components").resolve()
        preview = stack.preview(expect_no_changes=not (CHANGED_SINCE_THE_MOVE or ADDED_SINCE_THE_MOVE))
        assert preview.ok, preview.error[-3000:]
        assert set(preview.changes) <= {"same", "update", "create"}, preview.changes  # the engine's own count
        assert preview.changes.get("create", 0) == len(ADDED_SINCE_THE_MOVE), preview.changes
        changed = _resource_changes(preview, before)
        added = {n: op for n, op in changed.items() if n not in before}
        assert added == {n: "create" for n in ADDED_SINCE_THE_MOVE}, added
        changed = {n: op for n, op in changed.items() if n in before}
        assert set(changed) <= set(CHANGED_SINCE_THE_MOVE), changed
        assert set(changed.values()) <= {"update"}, changed

        since = clients.now()
        updated = stack.up()
        assert updated.ok, updated.error[-3000:]
        assert set(_resource_changes(updated, before)) <= set(CHANGED_SINCE_THE_MOVE) | set(ADDED_SINCE_THE_MOVE), (
            updated.changed()
        )
        after = {name: (r["type"], r.get("parent")) for name, r in stack.resources().items()}
        assert {n: v for n, v in after.items() if n not in ADDED_SINCE_THE_MOVE} == before  # the same resources
        assert set(after) - set(before) == set(ADDED_SINCE_THE_MOVE)
        assert (clients.starts(), clients.sha256(REGISTRIES_YAML)) == k3s  # trust file as it was, k3s not restarted
        if not CHANGED_SINCE_THE_MOVE:
            assert clients.ssh_logins(since) == 0  # nothing ran on the host
    finally:
        eng_mod.make_project(project, source=eng_mod.ROOT)
        if stack.resources():
            gone = stack.destroy()
            assert gone.ok, gone.error[-3000:]
