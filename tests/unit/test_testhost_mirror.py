"""The test host takes its Debian mirror from this machine's apt sources and names none of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import testhost


def _apt(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "sources.list.d").mkdir(exist_ok=True)
    return tmp_path


def test_deb822_sources_give_the_mirror_of_the_bookworm_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGTEST_DEBIAN_MIRROR", raising=False)
    apt = _apt(tmp_path, {"sources.list.d/debian.sources": (
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
    )})
    assert testhost.debian_mirror(apt) == "http://mirror.invalid/debian"


def test_one_line_sources_and_a_disabled_stanza(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGTEST_DEBIAN_MIRROR", raising=False)
    apt = _apt(tmp_path, {
        "sources.list": "# deb http://commented.invalid/debian bookworm main\ndeb [arch=amd64] http://one.invalid/debian bookworm main\n",
        "sources.list.d/off.sources": "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nEnabled: no\n",
    })
    assert testhost.debian_mirror(apt) == "http://one.invalid/debian"


def test_no_mirror_fails_clearly_and_names_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGTEST_DEBIAN_MIRROR", raising=False)
    with pytest.raises(testhost.TestHostError, match="no Debian mirror found.*REGTEST_DEBIAN_MIRROR"):
        testhost.debian_mirror(_apt(tmp_path, {"sources.list": "deb http://example.invalid/ubuntu jammy main\n"}))


def test_the_environment_overrides_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGTEST_DEBIAN_MIRROR", "http://override.invalid/debian")
    assert testhost.debian_mirror(_apt(tmp_path, {})) == "http://override.invalid/debian"
