"""host/steps/k3s-trust/registries_merge.py: the program's entries merged into a hand-made registries.yaml."""

from __future__ import annotations

import pytest
import yaml

from renderers.registries_yaml import render_registries_yaml
from tests.unit.support import DOMAIN, HAND_MADE, OWNED, registries_merge

MergeError = registries_merge.MergeError


merge = registries_merge.merge


def _lines_outside_ours(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  {DOMAIN}:", lines.index("configs:"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  ") and not lines[i].startswith("   "))
    return lines[:start] + lines[end:]


def test_merge_replaces_only_the_programs_entry_and_keeps_every_other_line_byte_for_byte() -> None:
    text, how = merge(HAND_MADE, OWNED)
    assert how == "merged line by line" and text is not None
    doc = yaml.safe_load(text)
    before = yaml.safe_load(HAND_MADE)
    assert doc == {**before, "configs": {**before["configs"], **OWNED["configs"]}}
    assert _lines_outside_ours(text) == _lines_outside_ours(HAND_MADE)  # comments, quoting, blank lines, flow style


@pytest.mark.parametrize(
    ("current", "kind"),
    [
        (None, "new file"),
        ("", "new file"),
        ("mirrors:\n  docker.io:\n    endpoint: [x]\n", "merged line by line"),  # no configs yet
        ("configs: {}\n", "merged line by line"),
        ("configs:\n    a.example:\n        auth: {username: u, password: p}\n", "merged line by line"),  # 4 spaces
        ('{"configs": {"a.example": {}}}\n', "rewritten with PyYAML"),  # JSON is YAML too
        ("configs:\n  a.example: &x\n    auth: {username: u}\n  b.example: *x\n", "merged line by line"),
    ],
)
def test_merge_handles_each_shape_and_always_gives_the_expected_document(current: str | None, kind: str) -> None:
    text, how = merge(current, OWNED)
    assert text is not None and how.startswith(kind)
    before = yaml.safe_load(current or "") or {}
    assert yaml.safe_load(text) == {**before, "configs": {**(before.get("configs") or {}), **OWNED["configs"]}}


def test_merge_of_an_up_to_date_file_changes_nothing() -> None:
    text, _ = merge(HAND_MADE, OWNED)
    assert merge(text, OWNED) == (text, "already up to date")


def test_a_new_file_is_what_render_registries_yaml_gives() -> None:
    ours = render_registries_yaml(DOMAIN, "k3s_pull", 'p"w:1 #x', "/etc/rancher/k3s/registry-ca.pem")
    assert merge(None, OWNED) == (ours, "new file")


def test_remove_drops_only_the_programs_entry_and_nothing_left_means_no_file() -> None:
    merged, _ = merge(HAND_MADE, OWNED)
    text, _ = merge(merged, {"configs": {DOMAIN: {}}}, remove=True)
    assert text is not None
    before = yaml.safe_load(HAND_MADE)
    del before["configs"][DOMAIN]
    assert yaml.safe_load(text) == before
    assert merge(merge(None, OWNED)[0], {"configs": {DOMAIN: {}}}, remove=True)[0] is None


def test_without_pyyaml_a_shape_it_cannot_edit_fails_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registries_merge, "_yaml", lambda: None)
    assert merge(HAND_MADE, OWNED)[1] == "merged line by line"
    with pytest.raises(MergeError, match="install python3-yaml"):
        merge('{"configs": {}}\n', OWNED)
