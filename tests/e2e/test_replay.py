"""The replay's engine and provider semantics: a fake SSH runner for the engine, the real test host for SSH."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.e2e import replay
from tests.e2e.testhost import TestHost
from tests.harness import SECRET_SIG, SECRET_VALUE, ProgramRun, Registration

CONNECTION = {"host": "127.0.0.1", "port": 22.0, "user": "ubuntu", "privateKey": "unused"}
PARENT = "urn:pulumi:t::registry::pulumi:pulumi:Stack::registry-t"


def urn(name: str, typ: str = replay.COMMAND) -> str:
    return f"urn:pulumi:t::registry::{typ}::{name}"


def command(
    name: str,
    create: str | None,
    *,
    deps: tuple[str, ...] = (),
    update: str | None = None,
    delete: str | None = None,
    stdin: str | None = None,
    triggers: list[Any] | None = None,
    logging: str = "stdoutAndStderr",
    dbr: bool = False,
) -> Registration:
    inputs: dict[str, Any] = {
        "connection": {SECRET_SIG: SECRET_VALUE, "value": CONNECTION},
        "logging": logging,
        "addPreviousOutputInEnv": False,
    }
    for key, value in (("create", create), ("update", update), ("delete", delete), ("triggers", triggers)):
        if value is not None:
            inputs[key] = value
    if stdin is not None:
        inputs["stdin"] = {SECRET_SIG: SECRET_VALUE, "value": stdin}
    return Registration(
        type=replay.COMMAND,
        name=name,
        urn=urn(name),
        parent=PARENT,
        custom=True,
        inputs=inputs,
        dependencies=[urn(d) for d in deps],
        delete_before_replace=dbr,
        replace_on_changes=["triggers[*]"],
        additional_secret_outputs=[],
        provider="",
        retain_on_delete=False,
    )


def secret_resource(name: str, data: str) -> Registration:
    typ = "kubernetes:core/v1:Secret"
    return Registration(
        type=typ,
        name=name,
        urn=urn(name, typ),
        parent=PARENT,
        custom=True,
        inputs={"stringData": {SECRET_SIG: SECRET_VALUE, "value": {".dockerconfigjson": data}}},
        dependencies=[],
        delete_before_replace=False,
        replace_on_changes=[],
        additional_secret_outputs=[],
        provider="",
        retain_on_delete=False,
    )


def program(*registrations: Registration) -> ProgramRun:
    return ProgramRun(registrations=list(registrations), exports={}, state={})


class FakeRunner(replay.SshRunner):
    """Records what the provider would run; `fail` maps a command to the exit status it ends with."""

    def __init__(self, fail: dict[str, int] | None = None, delay: float = 0.05) -> None:
        super().__init__()
        self.fail = fail or {}
        self.delay = delay
        self.calls: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def run(self, conn: dict[str, Any], command: str, **kwargs: Any) -> replay.RunOutput:
        assert conn == CONNECTION  # the revealed connection, as the provider decrypts it
        self._count(connections=1, sessions=1, exec_requests=1)
        with self.lock:
            self.calls.append((command, kwargs.get("stdin")))
        time.sleep(self.delay)
        if command in self.fail:
            raise replay.CommandFailed(
                f"Process exited with status {self.fail[command]}: running {replay.go_quote(command)}:\nboom\n"
            )
        on_output = kwargs.get("on_output")
        if on_output:
            on_output("stdout", f"ran {command}\n")
        return replay.RunOutput(0, f"ran {command}", "", f"ran {command}\n")


def apply(run: ProgramRun, state: replay.ReplayState, runner: FakeRunner) -> replay.ApplyResult:
    return replay.apply(run, state, runner=runner, console=lambda _line: None)


def test_fresh_apply_creates_in_dependency_order_and_a_rerun_runs_nothing() -> None:
    run = program(command("a", "make a"), command("b", "make b", deps=("a",)), command("c", "make c", deps=("b",)))
    state, runner = replay.ReplayState(), FakeRunner()
    first = apply(run, state, runner)
    assert first.ok and [c for c, _ in runner.calls] == ["make a", "make b", "make c"]
    again = apply(run, state, FakeRunner())
    assert again.ok and again.executions == [] and again.stats.connections == 0


def test_independent_commands_run_concurrently() -> None:
    run = program(command("a", "make a"), command("b", "make b"), command("c", "make c", deps=("a", "b")))
    result = apply(run, replay.ReplayState(), FakeRunner(delay=0.3))
    a, b, c = (result.ran(n)[0] for n in "abc")
    assert a.started < b.ended and b.started < a.ended
    assert c.started >= max(a.ended, b.ended)


def test_changed_inputs_run_update_or_else_create_again() -> None:
    state = replay.ReplayState()
    apply(program(command("a", "v1", update="refresh"), command("b", "b1", stdin="x")), state, FakeRunner())
    runner = FakeRunner()
    result = apply(program(command("a", "v2", update="refresh"), command("b", "b1", stdin="y")), state, runner)
    assert sorted(runner.calls) == [("b1", "y"), ("refresh", None)]
    assert {s.name: (s.op, s.diff) for s in result.steps} == {"a": ("update", ["create"]), "b": ("update", ["stdin"])}


def test_trigger_change_replaces_delete_first_only_with_delete_before_replace() -> None:
    state = replay.ReplayState()
    before = program(
        command("dbr", "new1", delete="rm1", triggers=["1"], dbr=True),
        command("cbd", "make1", delete="drop1", triggers=["1"]),
        command("after", "after", deps=("cbd", "dbr")),
    )
    apply(before, state, FakeRunner())
    runner = FakeRunner()
    after = program(
        command("dbr", "new2", delete="rm2", triggers=["2"], dbr=True),
        command("cbd", "make2", delete="drop2", triggers=["2"]),
        command("after", "after", deps=("cbd", "dbr")),
    )
    result = apply(after, state, runner)
    calls = [c for c, _ in runner.calls]
    assert calls.index("rm1") < calls.index("new2")  # the old delete command, before the new create
    assert calls[-1] == "drop1" and calls.index("make2") < calls.index("drop1")  # create first, old delete last
    assert {s.name: s.op for s in result.steps} == {"dbr": "replace", "cbd": "replace", "after": "same"}
    assert state.resources[urn("cbd")]["inputs"]["delete"] == "drop2"


def test_removed_resources_are_deleted_dependents_first_with_their_recorded_command() -> None:
    state = replay.ReplayState()
    apply(program(command("a", "make a", delete="rm a"), command("b", "make b", delete="rm b", deps=("a",))), state,
          FakeRunner())  # fmt: skip
    runner = FakeRunner()
    result = apply(program(), state, runner)
    assert result.ok and [c for c, _ in runner.calls] == ["rm b", "rm a"]
    assert state.resources == {}


def test_failed_create_leaves_no_state_and_its_dependents_do_not_run() -> None:
    state, runner = replay.ReplayState(), FakeRunner(fail={"make a": 3})
    run = program(command("a", "make a"), command("b", "make b", deps=("a",)))
    result = apply(run, state, runner)
    assert not result.ok
    assert result.error.endswith('Process exited with status 3: running "make a":\nboom\n')
    assert [c for c, _ in runner.calls] == ["make a"]
    assert {result.status[urn(n)] for n in "ab"} == {"failed", "skipped"}
    assert state.resources == {}
    retry = FakeRunner()
    apply(run, state, retry)
    assert [c for c, _ in retry.calls] == ["make a", "make b"]


def test_failed_update_keeps_the_old_state_so_the_next_run_tries_again() -> None:
    state = replay.ReplayState()
    apply(program(command("a", "v1")), state, FakeRunner())
    failed = apply(program(command("a", "v2")), state, FakeRunner(fail={"v2": 1}))
    assert not failed.ok and state.resources[urn("a")]["inputs"]["create"] == "v1"
    restored = apply(program(command("a", "v1")), state, FakeRunner())
    assert restored.ok and restored.executions == []


def test_an_interrupted_update_keeps_finished_steps_and_starts_nothing_after_them() -> None:
    """What a killed CLI leaves behind: finished steps in state, nothing after them, replaced ones marked for
    deletion (the next update deletes them)."""
    state = replay.ReplayState()
    apply(program(command("a", "a1", delete="rm a1", triggers=["1"]), command("b", "b1", deps=("a",))), state,
          FakeRunner())  # fmt: skip
    seen: list[str] = []

    def kill_after_a(event: str, step: replay.Step) -> None:
        seen.append(f"{event} {step.name}")
        if event == "done" and step.name == "a":
            raise replay.Interrupted("killed")

    runner = FakeRunner()
    changed = program(command("a", "a2", delete="rm a2", triggers=["2"]), command("b", "b2", deps=("a",)))
    with pytest.raises(replay.Interrupted):
        replay.apply(changed, state, runner=runner, console=lambda _line: None, hook=kill_after_a)
    assert [c for c, _ in runner.calls] == ["a2"]  # not b, not the old a's delete
    assert seen == ["start a", "done a"]
    assert state.resources[urn("a")]["inputs"]["create"] == "a2"
    assert state.resources[urn("b")]["inputs"]["create"] == "b1"
    resumed = FakeRunner()
    assert apply(changed, state, resumed).ok and [c for c, _ in resumed.calls] == ["b2", "rm a1"]


def test_kubernetes_resources_are_recorded_not_applied() -> None:
    state, runner = replay.ReplayState(), FakeRunner()
    result = apply(program(secret_resource("flux-secret", '{"auths": {}}')), state, runner)
    assert result.ok and runner.calls == []
    assert result.recorded("flux-secret")["stringData"][".dockerconfigjson"] == '{"auths": {}}'


def test_logging_none_prints_nothing_of_the_output() -> None:
    lines: list[str] = []
    run = program(command("quiet", "secret-handling", logging="none"), command("loud", "chatty"))
    replay.apply(run, replay.ReplayState(), runner=FakeRunner(), console=lines.append)
    assert any("ran chatty" in line for line in lines)
    assert not any("ran secret-handling" in line for line in lines)


def test_a_preview_run_with_unknown_inputs_cannot_be_applied() -> None:
    run = program(command("a", "04da6b54-80e4-46f7-96ec-b56ff0331ba9"))
    with pytest.raises(ValueError, match="unknown"):
        apply(run, replay.ReplayState(), FakeRunner())


def test_go_quote_matches_strconv_quote() -> None:
    assert replay.go_quote("a'b\"c\\d\n\te\x01é") == '"a\'b\\"c\\\\d\\n\\te\\x01é"'


# --- the provider's SSH behaviour, against the real test host ------------------------------------------------


def _connection(host: TestHost) -> dict[str, Any]:
    return {
        "host": host.ssh_host,
        "port": float(host.ssh_port),
        "user": host.user,
        "privateKey": host.private_key,
        "hostKey": host.host_key(),
        "dialErrorLimit": 3,
    }


@pytest.mark.e2e
def test_ssh_runs_through_the_login_shell_with_stdin_then_eof(testhost: TestHost) -> None:
    runner = replay.SshRunner()
    out = runner.run(_connection(testhost), 'echo "$0 $USER"; cat; echo done >&2', stdin="line 1\nline 2\n")
    assert out.stdout == f"bash {testhost.user}\nline 1\nline 2" and out.stderr == "done"
    assert runner.stats.connections == runner.stats.sessions == 1


@pytest.mark.e2e
def test_ssh_environment_is_sent_as_env_requests_and_a_refusal_fails_the_step(testhost: TestHost) -> None:
    runner = replay.SshRunner()
    assert runner.run(_connection(testhost), "echo $LANG", environment={"LANG": "C.UTF-8"}).stdout == "C.UTF-8"
    with pytest.raises(replay.CommandFailed, match='could not set environment variable "REGISTRY_PASSWORD"'):
        runner.run(_connection(testhost), "true", environment={"REGISTRY_PASSWORD": "x"})
    assert runner.stats.exec_requests == 1  # the refused step never ran its command


@pytest.mark.e2e
def test_ssh_failure_reports_status_command_and_combined_output(testhost: TestHost) -> None:
    with pytest.raises(replay.CommandFailed) as failure:
        replay.SshRunner().run(_connection(testhost), "echo out; echo err >&2; exit 7")
    head, _, combined = str(failure.value).partition(":\n")
    assert head == 'Process exited with status 7: running "echo out; echo err >&2; exit 7"'
    # stdout and stderr arrive on separate channels, so their order in the combined text is a race (as in the provider)
    assert sorted(combined.splitlines()) == ["err", "out"]


@pytest.mark.e2e
def test_ssh_pinned_host_key_mismatch_refuses_to_connect(testhost: TestHost) -> None:
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1sZ0mF3Y8aT5h1oVbq0pxJ8m2yZ7q3vWlXbV1c2Ds"
    runner = replay.SshRunner()
    with pytest.raises(replay.CommandFailed, match="host key mismatch"):
        runner.run({**_connection(testhost), "hostKey": other}, "touch /tmp/should-not-exist")
    assert runner.stats.sessions == 0
