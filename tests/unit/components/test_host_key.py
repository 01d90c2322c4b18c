"""The host key trusted on first use: what ssh-keyscan offers, which key is recorded, and a changed key refused
naming both fingerprints before anything dials the host."""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
from pathlib import Path

import pytest

from components import host
from components.host import HostKeyError, _HostKeyProvider, fingerprint, offered_keys, verified_key
from tests.unit.support import TYPICAL, Programs

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ8cQ2pXbNwq4h7Gd0lq4J0bY3Q8C1E3o2m6x9sKJ4m"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"
KEYSCAN = f"# 127.0.0.1:2222 SSH-2.0-OpenSSH_9.2p1\n[127.0.0.1]:2222 {RSA}\n[127.0.0.1]:2222 {ED}\n"


def test_fingerprint_is_openssh_sha256(tmp_path: Path) -> None:
    blob = base64.b64decode(ED.split()[1])
    assert fingerprint(ED) == "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    (tmp_path / "k.pub").write_text(ED + "\n")
    keygen = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True)
    assert keygen.stdout.split()[1] == fingerprint(ED)


def test_offered_keys_prefer_ed25519_and_skip_comments() -> None:
    assert offered_keys(KEYSCAN) == [ED, RSA]


def test_first_use_records_the_preferred_key_and_later_the_recorded_one_is_kept() -> None:
    assert verified_key(None, [ED, RSA], "h:22") == ED
    assert verified_key(RSA, [ED, RSA], "h:22") == RSA


def test_a_changed_key_is_refused_naming_the_old_and_new_fingerprints() -> None:
    with pytest.raises(HostKeyError) as info:
        verified_key(ED, [OTHER], "127.0.0.1:2222")
    message = str(info.value)
    assert f"the SSH host key of 127.0.0.1:2222 changed: recorded {fingerprint(ED)} (ssh-ed25519), offered now {fingerprint(OTHER)}" in message
    assert "before any secret was sent" in message
    assert "pulumi config set sshHostKey" in message


def test_check_records_on_first_use_and_fails_on_a_changed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = [[ED]]
    monkeypatch.setattr(host, "scan", lambda address, port: offered[0])
    provider = _HostKeyProvider()
    first = provider.check({}, {"address": "h", "port": 22, "key": None})
    assert first.failures == [] and first.inputs["key"] == ED and first.inputs["fingerprint"] == fingerprint(ED)
    assert provider.check(first.inputs, {"address": "h", "port": 22, "key": None}).inputs["key"] == ED
    offered[0] = [OTHER]
    changed = provider.check(first.inputs, {"address": "h", "port": 22, "key": None})
    assert [f.property for f in changed.failures] == ["key"]
    assert fingerprint(ED) in changed.failures[0].reason and fingerprint(OTHER) in changed.failures[0].reason


def test_a_host_that_does_not_answer_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(address: str, port: int) -> list[str]:
        raise HostKeyError(f"could not read the SSH host key of {address}:{port} (no answer); make the host reachable")

    monkeypatch.setattr(host, "scan", unreachable)
    result = _HostKeyProvider().check({}, {"address": "192.0.2.1", "port": 22, "key": None})
    assert "could not read the SSH host key of 192.0.2.1:22" in result.failures[0].reason


def test_scan_of_a_port_nothing_answers_on_is_refused_naming_it() -> None:
    with pytest.raises(HostKeyError, match=r"could not read the SSH host key of 127\.0\.0\.1:1 .*pin its key"):
        host.scan("127.0.0.1", 1)


def test_a_program_run_under_mocks_dials_nothing(programs: Programs) -> None:
    """The unit tier's program runs record the host key from the harness's offline scan: nothing connects to the
    stack's host (here a loopback port that counts connections; TYPICAL's documentation address otherwise)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        run = programs.ok({**TYPICAL, "host": "127.0.0.1", "sshPort": str(port)})
        with pytest.raises(BlockingIOError):
            server.accept()
    recorded = next(r for r in run.registrations if r.name == "host-key")
    assert recorded.inputs["address"] == "127.0.0.1" and recorded.inputs["port"] == port
