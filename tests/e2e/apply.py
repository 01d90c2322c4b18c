"""Run the program against a disposable local test host: mocks for the engine, real SSH for every command.

    python -m tests.e2e.apply --stack dev [--config Pulumi.dev.yaml] [--state-dir .e2e/dev] [--preview | --destroy]

The stack file's `registry:*` config is used as is; sshPort, sshPrivateKey and sshHostKey come from the running
test host (`python -m tests.e2e.testhost up`, container regtest-dev by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import replay, testhost
from tests.harness import PROJECT, ROOT, ProgramRun, run_program

PROGRAM_STATE = "program-state.json"
REPLAY_STATE = "replay-state.json"


class StackError(RuntimeError):
    """The stack file, state or test host is not usable."""


def read_stack_config(path: Path, project: str = PROJECT) -> dict[str, Any]:
    """`<project>:<key>` values under `config:` of a Pulumi.<stack>.yaml, un-namespaced."""
    if not path.exists():
        raise StackError(f"{path} not found")
    document = yaml.safe_load(path.read_text()) or {}
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise StackError(f"{path}: `config` is not a mapping")
    values: dict[str, Any] = {}
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace != project or not name:
            continue
        if isinstance(value, dict) and "secure" in value:
            raise StackError(f"{path}: {key} is encrypted (secure:); the replay cannot decrypt it, use a plain value")
        values[name] = value
    return values


@dataclass
class StateDir:
    """The program's mock state (random passwords) and the replay state, side by side."""

    path: Path

    @property
    def program_file(self) -> Path:
        return self.path / PROGRAM_STATE

    @property
    def replay_file(self) -> Path:
        return self.path / REPLAY_STATE

    def program_state(self) -> dict[str, Any]:
        return json.loads(self.program_file.read_text()) if self.program_file.exists() else {}

    def save_program_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.program_file.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
        os.replace(self.program_file.with_suffix(".tmp"), self.program_file)

    def replay_state(self) -> replay.ReplayState:
        return replay.ReplayState.load(self.replay_file)


def host_config(host: testhost.TestHost) -> dict[str, str]:
    """What only the running host knows: its SSH port, the login key and the host key to pin."""
    return {"sshPort": str(host.ssh_port), "sshPrivateKey": host.private_key, "sshHostKey": host.host_key()}


def save_pebble_root(host: testhost.TestHost, path: str) -> None:
    """Write Pebble's issuing roots where registryCaFile points, so k3s's containerd trusts the test ACME CA."""
    host.exec(f"install -d -m 0755 {shlex.quote(os.path.dirname(path))} && pebble-root {shlex.quote(path)}")


@dataclass
class Outcome:
    run: ProgramRun
    result: replay.ApplyResult | None
    steps: list[replay.Step]


def up(
    config: dict[str, Any],
    state_dir: StateDir,
    *,
    stack: str,
    preview: bool = False,
    console: replay.Console = print,
    runner: replay.SshRunner | None = None,
    hook: replay.StepHook | None = None,
) -> Outcome:
    """One `pulumi up` (or preview): run the program under mocks with the saved state, replay, save both states.

    A hook that raises replay.Interrupted stops the update as a killed CLI would; both states are saved and the
    exception propagates."""
    program_state = state_dir.program_state()
    run = run_program(config, program_state, preview=preview, stack=stack)
    if run.error:
        raise StackError(f"the program failed: {run.error}")
    state = state_dir.replay_state()
    if preview:
        return Outcome(run, None, replay.plan(run, state))
    try:
        result = replay.apply(run, state, runner=runner, console=console, hook=hook)
    finally:
        # Random passwords are created whatever happens to the commands, as in a real stack.
        state_dir.save_program_state(run.state)
        state.save(state_dir.replay_file)
    return Outcome(run, result, result.steps)


def down(
    state_dir: StateDir, *, console: replay.Console = print, runner: replay.SshRunner | None = None
) -> replay.ApplyResult:
    """`pulumi destroy`: every delete in reverse dependency order; generated passwords go too."""
    state = state_dir.replay_state()
    try:
        result = replay.destroy(state, runner=runner, console=console)
    finally:
        state.save(state_dir.replay_file)
    if result.ok:
        state_dir.save_program_state({})
    return result


def format_plan(steps: Sequence[replay.Step], result: replay.ApplyResult | None) -> str:
    symbols = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " "}
    rows = []
    for step in steps:
        if step.op == "same" and result is not None:
            continue
        status = "" if result is None else result.status.get(step.urn, "ok")
        seconds = "" if result is None else f"{result.durations.get(step.urn, 0.0):6.2f}s"
        how = "" if step.applied else " (recorded, not applied)"
        keys = [f"{k}?" if k in step.unknown else k for k in step.diff]
        diff = f" [{', '.join(keys)}]" if keys and step.op in ("update", "replace") else ""
        rows.append(f" {symbols[step.op]:>2} {step.name:<28} {step.op:<8} {seconds:>8} {status}{how}{diff}")
    unchanged = sum(1 for s in steps if s.op == "same")
    rows.append(f"    {len(steps) - unchanged} to change, {unchanged} unchanged")
    if any(s.unknown for s in steps):
        rows.append("    key?: computed from another resource's outputs, unknown until apply (may turn out unchanged)")
    return "\n".join(rows)


def format_outputs(run: ProgramRun, show_secrets: bool) -> str:
    rows = []
    for key in sorted(run.exports):
        value = run.exports[key]
        shown = "[secret]" if key in run.secret_exports and not show_secrets else value
        text = shown if isinstance(shown, str) else json.dumps(shown)
        rows.append(
            f"    {key}: {text}"
            if "\n" not in text
            else f"    {key}: |\n" + "\n".join(f"        {line}" for line in text.splitlines())
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.apply", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev", help="stack name (default dev)")
    parser.add_argument("--config", type=Path, help="stack file (default Pulumi.<stack>.yaml in the project)")
    parser.add_argument("--state-dir", type=Path, help="where both states live (default .e2e/<stack>)")
    parser.add_argument("--host", default=testhost.DEV_NAME, help=f"test host container (default {testhost.DEV_NAME})")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--preview", action="store_true", help="show what would run; run nothing")
    action.add_argument("--destroy", action="store_true", help="run every delete, forget the passwords")
    parser.add_argument("--show-secrets", action="store_true", help="print secret stack outputs in clear")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary (no command output)")
    args = parser.parse_args(argv)
    config_file = args.config or ROOT / f"Pulumi.{args.stack}.yaml"
    state_dir = StateDir(args.state_dir or ROOT / ".e2e" / args.stack)
    t0 = time.monotonic()
    try:
        if args.destroy:
            result = down(state_dir)
            print(format_plan(result.steps, result))
            print(
                f"replayed destroy (not a Pulumi run) {'succeeded' if result.ok else 'FAILED'} in {time.monotonic() - t0:.1f}s "
                f"({result.stats.sessions} SSH sessions)"
            )
            return 0 if result.ok else 1
        config = read_stack_config(config_file)
        host = testhost.attach_host(args.host)
        if host is None:
            raise StackError(
                f"test host {args.host} is not running: python -m tests.e2e.testhost up --name {args.host}"
            )
        config.update(host_config(host))
        if config.get("registryCaFile") and not args.preview:
            save_pebble_root(host, str(config["registryCaFile"]))
        outcome = up(config, state_dir, stack=args.stack, preview=args.preview)
    except (StackError, testhost.TestHostError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\n{'Preview' if outcome.result is None else 'Resources'} ({args.stack}):")
    print(format_plan(outcome.steps, outcome.result))
    if outcome.run.logs:
        print("\nDiagnostics:\n" + "\n".join(f"    {line}" for line in outcome.run.logs))
    if outcome.result is not None:
        result = outcome.result
        print(
            f"\n{'Replayed apply succeeded' if result.ok else 'Replayed apply FAILED'} in {time.monotonic() - t0:.1f}s "
            f"({result.stats.sessions} SSH sessions, {len(result.executions)} commands; the program under Pulumi's "
            "mocks and our replay of pulumi-command, not a Pulumi run)"
        )
        if args.json:
            print(json.dumps(result.to_json(), indent=1))
        print("Outputs:")
        print(format_outputs(outcome.run, args.show_secrets))
        print(
            f"\nFrom this machine (bash): curl --cacert <(docker exec {host.name} pebble-root) "
            f"--resolve {host.domain}:{host.https_port}:127.0.0.1 https://{host.domain}:{host.https_port}/v2/"
            f"\nOn the host: docker exec -it {host.name} bash"
        )
        return 0 if result.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
