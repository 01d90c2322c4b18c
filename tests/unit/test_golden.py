"""What lands on the host is byte for byte what the golden files hold (regenerate: python -m tests.unit.golden_render --write)."""

from __future__ import annotations

import pytest

from tests.unit import golden_render


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return golden_render.render_all()


def test_every_case_renders_the_files_the_golden_set_holds(rendered: dict[str, str]) -> None:
    assert sorted(rendered) == sorted(golden_render.on_disk())


def test_every_rendered_file_matches_its_golden_copy(rendered: dict[str, str]) -> None:
    golden = golden_render.on_disk()
    differ = [path for path, text in rendered.items() if golden.get(path) != text]
    assert not differ, f"differ from tests/unit/golden/: {differ}"


def test_no_generated_secret_reaches_a_golden_file(rendered: dict[str, str]) -> None:
    """The placeholders replaced every generated password and hash (else the golden set could never match twice)."""
    assert any("<credentials-push.bcrypt@2>" in t for t in rendered.values())
    assert any("<credentials-pull.result@1>" in t for t in rendered.values())
