"""Credential rotation as a handover: the real Pulumi engine (`pulumi up` through the Automation API) runs the
program against the test host over SSH while clients keep using the registry throughout.

Two clients loop continuously through the whole `up` and past it, as they would in production:

* k3s: `k3s crictl pull` every second through the k3s stand-in, which uses what registries.yaml held when k3s
  last started (as k3s does);
* CI: pushes in a loop with the push credential read from the stack outputs before the update (a job that
  outlives the update).

Nothing holds the engine between steps: what is asserted is what a user sees (no 401 and no failed pull while the
site accepts both generations, the previous passwords refused once the update is over, or once the grace period
is), plus the order of the steps as the engine's own event stream and the host's logs (Caddy's reloads, the k3s
stand-in's starts.log) show it.

Flux is off: its part runs on the host's Kubernetes API in test_flux.py. The pull credential's
switch is followed here through k3s.

The interrupted rotation kills the whole CLI (the engine and its plugins, as a cancelled CI runner does) right after
the handover step; the host's sshd listener is paused from the moment the handover's SSH session was accepted until
the CLI is dead, so no later step can start a session in between (the kill itself is asynchronous to the engine).
The recovery docs/operations.md gives (`pulumi cancel`, `pulumi refresh --clear-pending-creates`) and an `up` then complete it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from renderers.dockerconfigjson import dockerconfigjson
from tests.e2e import engine as eng_mod
from tests.e2e.clients import stack_config
from tests.e2e.engine import Engine, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

STACK = "rotation"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
PEBBLE_CLOSED_PORT = 5443
EXPIRY_DIR = "/var/lib/registry-credential-expiry"
UNAUTHORIZED = re.compile(r"\b401\b|unauthorized", re.IGNORECASE)
GRACE_SECONDS = 90
"""Longer than a rotation's `up` takes on a loaded machine: the test checks both generations right after it."""
PUSH_RETRIES = 2
"""CI's pushes retry network errors as `docker push` does: a Caddy reload closes idle keep-alive connections, and a
client that reuses one right then reads EOF (seen in CI: `writing blob: Head .../blobs/sha256:...: EOF`)."""


@dataclass
class Attempt:
    credential: str
    """Which password the client used (a label, never the password)."""
    ok: bool
    unauthorized: bool
    output: str
    started: float = 0.0
    ended: float = 0.0
    """Wall-clock times (the test host shares this machine's clock)."""


@dataclass
class Loop:
    """One client repeating an action in a thread until stopped."""

    name: str
    action: Callable[[], Attempt]
    pause: float
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def start(self) -> Loop:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.time()
            attempt = self.action()
            attempt.started, attempt.ended = t0, time.time()
            with self.cond:
                self.attempts.append(attempt)
                self.cond.notify_all()
            self.stop.wait(self.pause)

    def another_round(self, timeout: float = 180) -> None:
        """Block until one more attempt has completed (it started after this call, or was running)."""
        with self.cond:
            target = len(self.attempts) + 1
            assert self.cond.wait_for(lambda: len(self.attempts) >= target or self.stop.is_set(), timeout), self.name

    def started_after(self, when: float) -> None:
        """Block until an attempt that started after `when` has completed."""
        with self.cond:
            assert self.cond.wait_for(
                lambda: any(a.started > when for a in self.attempts) or self.stop.is_set(), 180
            ), self.name

    def halt(self) -> None:
        """Stop after the attempt in flight (it completes)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=300)

    def unauthorized(self) -> list[Attempt]:
        return [a for a in self.attempts if a.unauthorized]


@dataclass
class Stack(EngineStack):
    """The module's stack and what its tests read from the state."""

    def old_credentials(self) -> dict[str, tuple[str, str]]:
        return {
            "push": (self.exports["pushUsername"], self.exports["pushPassword"]),
            "pull": (self.exports["pullUsername"], self.exports["pullPassword"]),
        }

    def pull_config_json(self) -> str:
        """The pull-only credential from the stack outputs, as a Docker config (what k3s and Flux get)."""
        return dockerconfigjson(self.host.domain, self.exports["pullUsername"], self.exports["pullPassword"])

    def recorded(self, name: str) -> dict[str, Any]:
        """A resource's state entry (inputs, outputs), secrets in clear."""
        return dict(_plain(self.stack.resources(show_secrets=True)[name]))

    def status(self, user: str, password: str) -> int:
        return self.clients.http("/v2/", user=user, password=password).status


@pytest.fixture(scope="module")
def stack(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = stack_config(testhost, credentialRotation="1", flux="false")
    s: Stack = Stack.open(engine, STACK, testhost, tmp_path_factory.mktemp("rotation-project"), config)
    s.clients.pebble_tls_port(PEBBLE_CLOSED_PORT)
    s.clients.forget_certificates()
    try:
        result = s.apply()
        assert result.ok, f"fresh up failed:\n{result.error}"
        c = s.clients
        push = c.authfile("seed-push", s.exports["dockerConfigJson"])
        c.push(c.make_image("rotation-seed"), "e2e/rotation:1", push)
        c.make_image("rotation-ci")
        yield s
    finally:
        s.cleanup()
        s.clients.pebble_tls_port(443)


def _plain(value: Any) -> Any:
    """`pulumi stack export --show-secrets` value with every secret envelope replaced by its plaintext."""
    if isinstance(value, dict):
        if "plaintext" in value and len(value) == 2:
            return _plain(json.loads(value["plaintext"]))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _attempt(label: str, proc: Any) -> Attempt:
    text = (proc.stdout or "") + (proc.stderr or "")
    return Attempt(label, proc.returncode == 0, proc.returncode != 0 and bool(UNAUTHORIZED.search(text)), text[-600:])


def k3s_loop(stack: Stack) -> Loop:
    c = stack.clients

    def pull() -> Attempt:
        loaded = c.sh("tail -n 1 /var/lib/k3s-standin/starts.log | cut -d' ' -f2", check=False).stdout.strip()
        return _attempt(loaded[:12], c.k3s_pull("e2e/rotation:1", check=False))

    return Loop("k3s", pull, pause=1.0)


def ci_loop(stack: Stack, config_json: str, label: str) -> Loop:
    c = stack.clients
    path = c.authfile(f"ci-{label}", config_json)
    counter = iter(range(1, 10_000))

    def push() -> Attempt:
        tag = f"e2e/rotation-ci:{label}-{next(counter)}"
        return _attempt(label, c.push("e2e/rotation-ci:1", tag, path, check=False, retries=PUSH_RETRIES))

    return Loop("ci", push, pause=0.2)


def k3s_failures(loop: Loop) -> list[Attempt]:
    """Failed pulls, but for one in the instant k3s itself restarts (it is not running then)."""
    return [a for a in loop.attempts if not a.ok and "is not running" not in a.output]


def caddy_loads(stack: Stack, since: float) -> list[float]:
    """Wall-clock times of the config loads Caddy logged (every `systemctl reload caddy`) since `since`."""
    out = stack.clients.sh(
        f"journalctl -u caddy -o json --no-pager --since @{int(since)}", check=False
    ).stdout.splitlines()
    loads = []
    for line in out:
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        if isinstance(message, str) and '"uri":"/load"' in message:
            loads.append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return [t for t in loads if t >= since]


def k3s_start_times(stack: Stack) -> list[float]:
    """Wall-clock times of the k3s stand-in's starts (starts.log)."""
    times = []
    for when, _digest in stack.clients.starts():
        seconds, _, fraction = when.rstrip("Z").partition(".")
        times.append(datetime.fromisoformat(seconds + "+00:00").timestamp() + float(f"0.{fraction or '0'}"))
    return times


def executed(run: Run, name: str) -> eng_mod.Execution:
    """The step's one run that was no delete (a create, an update, or the create of a replacement)."""
    found = [e for e in run.ran(name) if e.phase != "delete"]
    assert len(found) == 1, (name, [(e.name, e.phase) for e in run.executions])
    return found[0]


# --- the handover, default grace period (refused at the end of the same update) ------------------------


def test_rotation_hands_over_without_a_401_and_restarts_k3s_once(stack: Stack) -> None:
    c = stack.clients
    old = stack.old_credentials()
    starts_before = c.starts()
    loops = {"k3s": k3s_loop(stack).start(), "ci": ci_loop(stack, stack.exports["dockerConfigJson"], "before").start()}
    try:
        for loop in loops.values():
            loop.another_round()
        began = time.time()
        result = stack.apply(credentialRotation="2")
        finished = time.time()
        assert result.ok, result.error
        for loop in loops.values():  # k3s on the new password, the CI job still on the old one, after the update
            loop.started_after(finished)
    finally:
        for loop in loops.values():
            loop.halt()
    print(f"\nattempts during the rotation: { {n: len(lp.attempts) for n, lp in loops.items()} }, up {result.seconds:.0f}s")

    # The order the handover needs, as the engine ran it: site accepts both -> k3s switches -> site drops the old.
    handover = executed(result, "caddy-site-handover")
    trust = executed(result, "k3s-trust-file")
    restart = executed(result, "k3s-trust-restart")
    settle = executed(result, "caddy-site-file")
    assert all(e.ok for e in (handover, trust, restart, settle))
    assert handover.ended <= trust.started
    assert trust.ended <= restart.started
    assert restart.ended <= settle.started
    # ... and as the host lived it: two Caddy reloads, k3s's one restart between them.
    loads = caddy_loads(stack, began)
    assert len(loads) >= 2, loads
    starts_after = c.starts()
    assert starts_after[: len(starts_before)] == starts_before
    assert len(starts_after) == len(starts_before) + 1
    k3s_started = k3s_start_times(stack)[-1]
    assert loads[0] < k3s_started < loads[-1], (loads, k3s_started)
    final_load = loads[-1]

    # k3s: never a 401, never a failed pull, on both sides of its switch.
    k3s = loops["k3s"]
    assert not k3s.unauthorized(), f"k3s got 401: {k3s.unauthorized()[0].output}"
    assert not k3s_failures(k3s), f"k3s failed: {k3s_failures(k3s)[0].output}"
    assert len({a.credential for a in k3s.attempts}) == 2
    # CI with the old password: every push that ended before the last reload succeeded; every push that started
    # after the update finished is refused (grace 0); only the ones in between may meet either site.
    ci = loops["ci"]
    before = [a for a in ci.attempts if a.ended < final_load]
    assert before, "no CI push ran before the site refused the old password"
    assert all(a.ok for a in before), [a.output for a in before if not a.ok][0]
    after = [a for a in ci.attempts if a.started > finished]
    assert after and all(a.unauthorized for a in after), [a.output for a in after]

    # After the update: the previous passwords are refused, the new ones work, registries.yaml is what k3s loaded.
    for user, password in old.values():
        assert stack.status(user, password) == 401
    assert stack.status(stack.exports["pushUsername"], stack.exports["pushPassword"]) == 200
    assert stack.status(stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    assert starts_after[-1][1] == c.sha256(REGISTRIES_YAML)
    assert "handle_errors" not in c.sh("cat /etc/caddy/registry.caddy").stdout


def test_a_second_update_after_the_rotation_changes_nothing(stack: Stack) -> None:
    result = stack.apply()
    assert result.ok, result.error
    assert not result.executions, [e.name for e in result.executions]


# --- interrupted between the site and the trust file -----------------------------------------------------


class SshGate:
    """Pauses the host's sshd listener (SIGSTOP, from this machine) as soon as it has accepted the next SSH
    connection: the session it forked runs to its end, every later connection waits in the listen queue."""

    def __init__(self, host: TestHost) -> None:
        inner = int(host.exec("systemctl show -p MainPID --value ssh").stdout)
        init = int(subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", host.name], capture_output=True, text=True, check=True
        ).stdout)  # fmt: skip
        self.listener = next(
            pid for pid in _pids() if _status(pid).get("PPid") == str(init)
            and _status(pid).get("NSpid", "").split()[-1:] == [str(inner)]
        )
        self.baseline = self._children()
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ssh-gate", daemon=True)

    def _children(self) -> set[int]:
        return {pid for pid in _pids() if _status(pid).get("PPid") == str(self.listener)}

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._children() - self.baseline:
                os.kill(self.listener, signal.SIGSTOP)
                self.closed.set()
                return
            time.sleep(0.005)

    def __enter__(self) -> SshGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.kill(self.listener, signal.SIGCONT)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_interrupted_rotation_leaves_every_client_working_and_the_next_update_completes_it(stack: Stack) -> None:
    c = stack.clients
    old = stack.old_credentials()
    old_pull = c.authfile("interrupted-old-pull", stack.pull_config_json())
    old_push = c.authfile("interrupted-old-push", stack.exports["dockerConfigJson"])
    starts_before = c.starts()
    trust_before = c.sha256(REGISTRIES_YAML)
    handover_before = stack.recorded("caddy-site-handover")["inputs"]["triggers"]
    killed: list[int] = []

    def kill_after_site(event: str, name: str, op: str) -> None:
        if event == "after" and name == "caddy-site-handover" and op != "delete-replaced" and not killed:
            killed.extend(eng_mod.kill_cli(tree=True) or [0])

    with SshGate(stack.host) as gate:
        run = stack.apply(hook=kill_after_site, credentialRotation="3")
        assert gate.closed.is_set()
    assert killed and not run.ok, run.error
    # The rotation's first SSH session was the handover's, and it finished; nothing after it reached the host.
    assert [(e.name, e.phase, e.ok) for e in run.executions] == [("caddy-site-handover", "create", True)]
    assert c.sha256(REGISTRIES_YAML) == trust_before and c.starts() == starts_before

    # The recovery docs/operations.md gives.
    eng, project = stack.stack.engine, stack.stack.project_dir
    eng.cli(["cancel", "--yes", "--stack", STACK], cwd=project)
    eng.cli(["refresh", "--yes", "--clear-pending-creates", "--stack", STACK], cwd=project)
    # Whether the handover of the new generation reached the state depends on when the kill landed after its
    # event (the CLI writes the checkpoint right after): both are legitimate, and both must recover.
    handover_recorded = stack.recorded("caddy-site-handover")["inputs"]["triggers"] != handover_before
    # Every client works: the old password everywhere it still is, and the new one (a CI job that read it).
    assert "Image is up to date" in c.k3s_pull("e2e/rotation:1").stdout
    assert json.loads(c.list_tags("e2e/rotation", old_pull).stdout)["Tags"] == ["1"]
    c.push("e2e/rotation-ci:1", "e2e/rotation-ci:interrupted-old", old_push)
    new_password = stack.recorded("credentials-push")["outputs"]["result"]
    assert new_password != old["push"][1]
    new_push = c.authfile(
        "interrupted-new-push", dockerconfigjson(stack.host.domain, old["push"][0], new_password)
    )
    c.push("e2e/rotation-ci:1", "e2e/rotation-ci:interrupted-new", new_push)
    for user, password in old.values():
        assert stack.status(user, password) == 200

    result = stack.apply()  # the same config: completes the rotation
    assert result.ok, result.error
    changed = result.changed()
    handover = result.ran("caddy-site-handover")
    assert all(e.ok for e in handover), handover
    if handover_recorded:
        # The site step is not repeated: its only step here is the delete of the generation it replaced before
        # the kill (a no-op on the host; the engine reports that delete-replaced as part of a "replace").
        assert [e.phase for e in handover] in ([], ["delete"]), handover
    else:
        # The state never saw the new handover: it runs again (the same site, installed again), once.
        assert [e.phase for e in handover].count("create") == 1, handover
    assert {"k3s-trust-file", "k3s-trust-restart", "caddy-site-file"} <= set(changed), changed
    assert stack.exports["pushPassword"] == new_password
    for user, password in old.values():
        assert stack.status(user, password) == 401
    assert stack.status(stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    assert len(c.starts()) == len(starts_before) + 1
    assert "Image is up to date" in c.k3s_pull("e2e/rotation:1").stdout
    new_pull = c.authfile("interrupted-new-pull", stack.pull_config_json())
    assert json.loads(c.list_tags("e2e/rotation", new_pull).stdout)["Tags"] == ["1"]


# --- a grace period ----------------------------------------------------------------------------------------


def rotated_at(stack: Stack) -> int:
    return int(stack.recorded("credentials-generations")["outputs"]["rotated_at"])


def test_grace_period_keeps_the_old_credentials_until_the_host_timer_refuses_them(stack: Stack) -> None:
    c = stack.clients
    old = stack.old_credentials()
    starts_before = c.starts()
    # This time the CI job with the old password runs through the whole update and past it.
    loops = {"k3s": k3s_loop(stack).start(), "ci": ci_loop(stack, stack.exports["dockerConfigJson"], "graced").start()}
    try:
        for loop in loops.values():
            loop.another_round()
        result = stack.apply(credentialGracePeriod=f"{GRACE_SECONDS}s", credentialRotation="4")
        finished = time.time()
        assert result.ok, result.error
        for loop in loops.values():  # after the update: k3s on the new password, CI still on the old
            loop.started_after(finished)
    finally:
        for loop in loops.values():
            loop.halt()
    deadline = rotated_at(stack) + GRACE_SECONDS
    assert time.time() < deadline, "the update and the loops outlasted the grace period: raise GRACE_SECONDS"
    for name, loop in loops.items():
        assert not loop.unauthorized(), f"{name} got 401: {loop.unauthorized()[0].output}"
    assert not k3s_failures(loops["k3s"]), k3s_failures(loops["k3s"])[0].output
    assert all(a.ok for a in loops["ci"].attempts), [a.output for a in loops["ci"].attempts if not a.ok][0]
    assert len({a.credential for a in loops["k3s"].attempts}) == 2
    assert len(c.starts()) == len(starts_before) + 1
    new = stack.old_credentials()
    # Right after the update both generations work; a timer on the host ends the grace period.
    for user, password in [*old.values(), *new.values()]:
        assert stack.status(user, password) == 200
    assert c.sh("systemctl is-active registry-credential-expiry.timer", check=False).stdout.strip() == "active"
    assert c.sh(f"stat -c '%a %U' {EXPIRY_DIR} {EXPIRY_DIR}/site").stdout.split() == ["700", "root", "600", "root"]
    # Waiting for the timer (not timing it): the staged site is gone once it has run.
    until = time.monotonic() + GRACE_SECONDS + 180
    while c.sh(f"test -e {EXPIRY_DIR}/site", check=False).returncode == 0:
        assert time.monotonic() < until, c.sh("systemctl status registry-credential-expiry.timer", check=False).stdout
        time.sleep(2)
    for user, password in old.values():
        assert stack.status(user, password) == 401
    for user, password in new.values():
        assert stack.status(user, password) == 200
    assert "previous credentials refused" in c.sh("journalctl -u registry-credential-expiry -o cat --no-pager").stdout
    assert "handle_errors" not in c.sh("cat /etc/caddy/registry.caddy").stdout
    # The next update sees nothing to do: the timer's site is the one the program expects.
    again = stack.apply()
    assert again.ok, again.error
    assert not again.executions, [e.name for e in again.executions]


def test_grace_period_back_to_zero_removes_the_timer(stack: Stack) -> None:
    c = stack.clients
    old = stack.old_credentials()
    result = stack.apply(credentialGracePeriod="1h", credentialRotation="5")
    assert result.ok, result.error
    assert stack.status(*old["push"]) == 200
    assert c.sh("systemctl is-active registry-credential-expiry.timer", check=False).stdout.strip() == "active"
    result = stack.apply(credentialGracePeriod="0")
    assert result.ok, result.error
    assert {e.name for e in result.executions} >= {"caddy-site-file"}
    assert stack.status(*old["push"]) == 401
    assert c.sh(
        f"test -e {EXPIRY_DIR} || test -e /etc/systemd/system/registry-credential-expiry.timer", check=False
    ).returncode != 0


def test_grace_period_ends_at_boot_when_the_host_was_down_at_its_end(stack: Stack) -> None:
    c = stack.clients
    old = stack.old_credentials()
    result = stack.apply(credentialGracePeriod="40s", credentialRotation="6")
    assert result.ok, result.error
    deadline = rotated_at(stack) + 40
    assert int(c.sh("date +%s").stdout) < deadline, "the update outlasted the 40 s grace period"
    assert stack.status(*old["pull"]) == 200
    # Stopping the timer stands in for a host that is down when the grace period ends ...
    c.sh("systemctl stop registry-credential-expiry.timer")
    until = time.monotonic() + 120
    while int(c.sh("date +%s").stdout) <= deadline:
        assert time.monotonic() < until
        time.sleep(2)
    assert stack.status(*old["pull"]) == 200  # nothing ended it yet
    # ... and comes back after it: the expiry unit runs at boot and finds the period over.
    stack.host.restart()
    c.trust_pebble()
    c.wait_registry(timeout=90)
    until = time.monotonic() + 120
    while c.sh(f"test -e {EXPIRY_DIR}/site", check=False).returncode == 0:
        assert time.monotonic() < until, c.sh("systemctl status registry-credential-expiry.service", check=False).stdout
        time.sleep(2)
    for user, password in old.values():
        assert stack.status(user, password) == 401
    assert stack.status(stack.exports["pullUsername"], stack.exports["pullPassword"]) == 200
    again = stack.apply()
    assert again.ok, again.error
    assert not again.executions, [e.name for e in again.executions]
