"""What lands on the host is byte for byte what the golden files hold (regenerate: python -m tests.unit.golden_render --write)."""

from __future__ import annotations

import re

import pytest

from tests.unit import golden_render


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return golden_render.render_all()


def test_every_case_renders_the_files_the_golden_set_holds(rendered: dict[str, str]) -> None:
    assert sorted(rendered) == sorted(golden_render.decode(golden_render.on_disk()))


def test_every_rendered_file_matches_its_golden_copy(rendered: dict[str, str]) -> None:
    golden = golden_render.decode(golden_render.on_disk())
    differ = [path for path, text in rendered.items() if golden.get(path) != text]
    assert not differ, f"differ from tests/unit/golden/: {differ}"


def test_the_stored_form_gives_back_every_render_exactly(rendered: dict[str, str]) -> None:
    """Diffs against the defaults and host/ placeholders lose nothing, a missing final newline included."""
    assert golden_render.decode(golden_render.encode(rendered)) == rendered
    edge = {"defaults/a": "x\ny\nz", "other/a": "x\nY\nz\n", "defaults/b": "1\n2\n", "other/b": "1\n2"}
    assert golden_render.decode(golden_render.encode(edge)) == edge


def test_a_case_stores_only_what_its_settings_change(rendered: dict[str, str]) -> None:
    """A file identical to the defaults' is listed, not stored; one that differs is stored as a diff naming both."""
    stored = golden_render.encode(rendered)
    assert stored["rotation/files.txt"].splitlines() == sorted(
        p.split("/", 1)[1] for p in rendered if p.startswith("rotation/")
    )
    assert "rotation/registry-container.create.sh" not in stored
    assert rendered["rotation/registry-container.create.sh"] == rendered["defaults/registry-container.create.sh"]
    assert stored["replicas/registry-container.create.sh.diff"].startswith(
        "--- defaults/registry-container.create.sh\n+++ replicas/registry-container.create.sh\n"
    )


def test_no_generated_secret_reaches_a_golden_file(rendered: dict[str, str]) -> None:
    """The placeholders replaced every generated password and hash (else the golden set could never match twice)."""
    assert any("<credentials-push.bcrypt@2>" in t for t in rendered.values())
    assert any("<credentials-pull.result@1>" in t for t in rendered.values())


def test_a_shipped_file_is_recorded_by_its_digest(rendered: dict[str, str]) -> None:
    """The trust step carries host/steps/k3s-trust/registries_merge.py; golden records it as a digest placeholder."""
    stored = golden_render.encode(rendered)["defaults/k3s-trust-file.create.sh"]
    assert re.search(r"<host/steps/k3s-trust/registries_merge\.py sha256=[0-9a-f]{64} quoted>", stored)
    assert "def main(" in rendered["defaults/k3s-trust-file.create.sh"]
    assert "def main(" not in stored
