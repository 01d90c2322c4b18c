"""Replay what pulumi-command's remote.Command would do for a mocked program run, over real SSH.

The engine's part (diff against recorded state, step order, replacement, deletion) and the provider's
part (one SSH connection per command, environment as env requests, stdin then EOF, error text) are both
modelled on Pulumi 3.272 and pulumi-command 1.2.1. Kubernetes and random resources are recorded only.
"""

from __future__ import annotations

import base64
import codecs
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from tests.harness import ProgramRun, Registration, contains_unknown, reveal

COMMAND = "command:remote:Command"
STATE_VERSION = 1
PULUMI_COMMAND_STDOUT = "PULUMI_COMMAND_STDOUT"
PULUMI_COMMAND_STDERR = "PULUMI_COMMAND_STDERR"

Console = Callable[[str], None]
StepHook = Callable[[str, "Step"], None]
"""Called with ("start", step) before a step runs and ("done", step) once it is in state; tests use it to sync
clients with the update or to stop it there (raise Interrupted: what a killed CLI leaves behind)."""


class Interrupted(Exception):
    """Raised by a step hook to stop the update as a killed CLI would: finished steps stay in state, nothing else
    starts, replaced resources are not deleted."""


def is_command(typ: str) -> bool:
    return typ == COMMAND


# --- Go formatting the provider's errors use --------------------------------------------------------------


def go_quote(text: str) -> str:
    """Go's strconv.Quote (the %q verb): what the provider's error shows for the command string."""
    escapes = {
        "\a": r"\a",
        "\b": r"\b",
        "\f": r"\f",
        "\n": r"\n",
        "\r": r"\r",
        "\t": r"\t",
        "\v": r"\v",
        "\\": "\\\\",
        '"': '\\"',
    }
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


# --- the provider: one command over SSH --------------------------------------------------------------------


class CommandFailed(Exception):
    """A step failed; str() is the error the provider returns to the engine."""


@dataclass
class SshStats:
    """What the replay cost on the wire; the provider dials a new connection for every command."""

    connections: int = 0
    sessions: int = 0
    env_requests: int = 0
    exec_requests: int = 0

    @property
    def round_trips(self) -> int:
        """Connections are the expensive round trips: TCP + key exchange + auth, then one session each."""
        return self.connections


@dataclass
class RunOutput:
    exit_code: int
    stdout: str
    stderr: str
    combined: str
    warnings: list[str] = field(default_factory=list)


def _load_private_key(text: str, password: str | None) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=password)
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise CommandFailed("ssh: no key found (" + "; ".join(errors) + ")")


def _pinned_key(line: str) -> tuple[str, bytes]:
    parts = line.strip().split()
    if len(parts) < 2:
        raise CommandFailed(f"hostKey {line!r} is not a public key line such as 'ssh-ed25519 AAAA...'")
    return parts[0], base64.b64decode(parts[1])


def _host_key_algorithms(key_type: str) -> tuple[str, ...]:
    # Negotiate the pinned key's type, as OpenSSH does when known_hosts has an entry.
    if key_type == "ssh-rsa":
        return ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    return (key_type,)


class SshRunner:
    """Runs one command the way pulumi-command's CommandOutputs.run does (paramiko instead of x/crypto/ssh)."""

    def __init__(self) -> None:
        self.stats = SshStats()
        self._lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + delta)

    def dial(self, conn: dict[str, Any]) -> paramiko.Transport:
        if conn.get("proxy"):
            raise CommandFailed("connection.proxy is not supported by the replay")
        host = conn["host"]
        port = int(conn.get("port") or 22)
        user = conn.get("user") or "root"
        timeout = float(conn.get("perDialTimeout") or 15) or None
        limit = int(conn["dialErrorLimit"]) if conn.get("dialErrorLimit") is not None else 10
        attempts = 50 if limit < 0 else limit + 1
        delay = 0.1
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                return self._dial_once(host, port, user, timeout, conn)
            except CommandFailed:
                raise
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
        raise CommandFailed(f"after {attempts - 1} failed attempts: dial tcp {host}:{port}: {last}")

    def _dial_once(
        self, host: str, port: int, user: str, timeout: float | None, conn: dict[str, Any]
    ) -> paramiko.Transport:
        sock = socket.create_connection((host, port), timeout=timeout)
        transport = paramiko.Transport(sock)
        self._count(connections=1)
        try:
            pinned = _pinned_key(conn["hostKey"]) if conn.get("hostKey") else None
            if pinned:
                transport.get_security_options().key_types = _host_key_algorithms(pinned[0])
            transport.start_client(timeout=timeout)
            server_key = transport.get_remote_server_key()
            if pinned and (server_key.get_name(), server_key.asbytes()) != pinned:
                raise CommandFailed(
                    f"ssh: handshake failed: host key mismatch for {host}:{port}: "
                    f"server offered {server_key.get_name()} {server_key.get_base64()}"
                )
            self._authenticate(transport, user, conn)
            return transport
        except BaseException:
            transport.close()
            raise

    def _authenticate(self, transport: paramiko.Transport, user: str, conn: dict[str, Any]) -> None:
        tried = []
        if conn.get("privateKey"):
            tried.append("publickey")
            key = _load_private_key(conn["privateKey"], conn.get("privateKeyPassword"))
            try:
                transport.auth_publickey(user, key)
                return
            except paramiko.AuthenticationException:
                pass
        if conn.get("password"):
            tried.append("password")
            try:
                transport.auth_password(user, conn["password"])
                return
            except paramiko.AuthenticationException:
                pass
        agent_path = conn.get("agentSocketPath") or os.environ.get("SSH_AUTH_SOCK")
        if agent_path:
            tried.append("publickey(agent)")
            for key in paramiko.Agent().get_keys():
                try:
                    transport.auth_publickey(user, key)
                    return
                except paramiko.AuthenticationException:
                    continue
        raise CommandFailed(
            f"ssh: handshake failed: ssh: unable to authenticate, attempted methods [none {' '.join(tried)}], "
            "no supported methods remain"
        )

    def _open_session(self, transport: paramiko.Transport, env: dict[str, str]) -> paramiko.Channel:
        channel = transport.open_session()
        self._count(sessions=1)
        for key, value in env.items():
            self._setenv(channel, key, value)
        return channel

    def _setenv(self, channel: paramiko.Channel, key: str, value: str) -> None:
        self._count(env_requests=1)
        if not env_request(channel, key, value):
            raise _SetenvRefused(key)

    def run(
        self,
        conn: dict[str, Any],
        command: str,
        *,
        stdin: str | None = None,
        environment: dict[str, str] | None = None,
        previous: dict[str, str] | None = None,
        on_output: Callable[[str, str], None] | None = None,
    ) -> RunOutput:
        """Dial, open a session, send env (refusal fails), exec, pipe stdin then EOF, collect output.

        Raises CommandFailed with the provider's message when the command exits non-zero.
        """
        warnings: list[str] = []
        transport = self.dial(conn)
        try:
            env = {str(k): str(v) for k, v in (environment or {}).items()}
            try:
                channel = self._open_session(transport, env)
            except _SetenvRefused as exc:
                raise CommandFailed(
                    f"could not set environment variable {go_quote(exc.key)}: ssh: setenv failed\n"
                    f"Unable to set '{exc.key}'. This only works if your SSH server is configured to accept "
                    "these variables via AcceptEnv."
                ) from None
            for key, value in (previous or {}).items():
                if not value:
                    continue
                try:
                    self._setenv(channel, key, value)
                    env[key] = value
                except _SetenvRefused:
                    # The provider only warns for its own variables; paramiko closed the channel, so reopen it.
                    warnings.append(
                        f"Unable to set '{key}'. This only works if your SSH server accepts it via AcceptEnv"
                    )
                    channel = self._open_session(transport, env)
            channel.exec_command(command)
            self._count(exec_requests=1)
            return self._collect(channel, command, stdin, on_output, warnings)
        finally:
            transport.close()

    def _collect(
        self,
        channel: paramiko.Channel,
        command: str,
        stdin: str | None,
        on_output: Callable[[str, str], None] | None,
        warnings: list[str],
    ) -> RunOutput:
        def feed() -> None:
            try:
                if stdin:
                    channel.sendall(stdin.encode())
                channel.shutdown_write()
            except (OSError, paramiko.SSHException):
                pass  # the command exited without reading all of stdin

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        out, err, both = bytearray(), bytearray(), bytearray()
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}

        def take(stream: str) -> bool:
            ready = channel.recv_ready() if stream == "stdout" else channel.recv_stderr_ready()
            if not ready:
                return False
            data = channel.recv(65536) if stream == "stdout" else channel.recv_stderr(65536)
            (out if stream == "stdout" else err).extend(data)
            both.extend(data)
            if on_output:
                on_output(stream, decoders[stream].decode(data))
            return True

        while True:
            got = take("stdout") | take("stderr")
            if got:
                continue
            # sshd may send the exit status before the last output: wait for EOF (or close) as well.
            if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                while take("stdout") | take("stderr"):
                    pass
                break
            channel.status_event.wait(0.01)
        status = channel.recv_exit_status()
        feeder.join(timeout=5)
        stdout, stderr, combined = (bytes(b).decode("utf-8", "replace") for b in (out, err, both))
        if status != 0:
            reason = (
                "wait: remote command exited without exit status or exit signal"
                if status < 0
                else f"Process exited with status {status}"
            )
            raise CommandFailed(f"{reason}: running {go_quote(command)}:\n{combined}")
        return RunOutput(status, stdout.removesuffix("\n"), stderr.removesuffix("\n"), combined, warnings)


def env_request(channel: paramiko.Channel, key: str, value: str) -> bool:
    """Send an `env` channel request asking for a reply, as Go's session.Setenv does; True if sshd accepts it.

    paramiko's set_environment_variable sends want_reply=False and so never learns of a refusal; the provider
    relies on the reply (a refused variable fails the step).
    """
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("env")
    message.add_boolean(True)
    message.add_string(key)
    message.add_string(value)
    channel._event_pending()  # paramiko has no public request-with-reply API
    channel.transport._send_user_message(message)
    try:
        channel._wait_for_event()
    except paramiko.SSHException:
        return False
    return True


class _SetenvRefused(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


# --- recorded state ----------------------------------------------------------------------------------------


@dataclass
class ReplayState:
    """Per URN the last applied (revealed) inputs, outputs and graph edges: the engine's checkpoint."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_deletes: list[dict[str, Any]] = field(default_factory=list)
    """Replaced resources whose delete failed; the next apply retries them (Pulumi's `delete: true`)."""

    @classmethod
    def load(cls, path: Path) -> ReplayState:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported replay state version {data.get('version')!r}")
        return cls(resources=data["resources"], pending_deletes=data.get("pending_deletes", []))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        # It holds the revealed inputs (stdin, private key): owner-only, like a local Pulumi backend should be.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(
                {"version": STATE_VERSION, "resources": self.resources, "pending_deletes": self.pending_deletes},
                fh,
                indent=1,
                sort_keys=True,
            )
        os.replace(tmp, path)


def _entry(reg: Registration, dependencies: list[str], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": reg.type,
        "name": reg.name,
        "inputs": reveal(reg.inputs),
        "outputs": outputs or {},
        "dependencies": dependencies,
        "delete_before_replace": reg.delete_before_replace,
        "replace_on_changes": reg.replace_on_changes,
    }


# --- plan ---------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """What the engine decided for one resource."""

    urn: str
    type: str
    name: str
    op: str
    """create | update | replace | delete | same"""
    applied: bool
    """False for resources that are recorded only (Kubernetes, random, providers)."""
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    dependencies: list[str]
    diff: list[str] = field(default_factory=list)
    delete_before_replace: bool = False

    @property
    def unknown(self) -> list[str]:
        """Changed inputs a preview cannot know yet: computed from other resources' outputs."""
        if self.new is None:
            return []
        return [k for k in self.diff if contains_unknown(self.new["inputs"].get(k))]


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if contains_unknown(new.get(k)) or old.get(k) != new.get(k)]


def _replaces(reg: Registration, changed: Iterable[str]) -> bool:
    paths = {p.split("[")[0].split(".")[0] for p in reg.replace_on_changes}
    if is_command(reg.type):
        paths.add("triggers")  # pulumi-command's own diff: triggers force replacement
    elif reg.type.startswith("random:"):
        return True  # every RandomPassword input forces a new password
    return any(k in paths for k in changed)


def _custom_dependencies(run: ProgramRun) -> dict[str, list[str]]:
    """Dependencies as custom-resource URNs (a component dependency stands for all its custom descendants)."""
    by_urn = {r.urn: r for r in run.registrations}
    children: dict[str, list[str]] = {}
    for r in run.registrations:
        children.setdefault(r.parent, []).append(r.urn)

    def expand(urn: str) -> list[str]:
        reg = by_urn.get(urn)
        if reg is None or reg.custom:
            return [urn]
        found: list[str] = []
        for child in children.get(urn, []):
            found.extend(expand(child))
        return found

    result = {}
    for r in run.registrations:
        if r.custom:
            deps: list[str] = []
            for d in r.dependencies:
                deps.extend(u for u in expand(d) if u not in deps and u != r.urn)
            result[r.urn] = deps
    return result


def plan(run: ProgramRun, state: ReplayState) -> list[Step]:
    """Diff every custom resource of the run against state, as the engine would; removed ones become deletes."""
    if run.error:
        raise ValueError(f"the program failed under mocks: {run.error}")
    deps = _custom_dependencies(run)
    steps: list[Step] = []
    for reg in run.registrations:
        if not reg.custom:
            continue
        new = _entry(reg, deps[reg.urn])
        old = state.resources.get(reg.urn)
        applied = is_command(reg.type)
        if old is None:
            op, changed = "create", []
        else:
            changed = _changed_keys(old["inputs"], new["inputs"])
            op = "same" if not changed else ("replace" if _replaces(reg, changed) else "update")
        steps.append(
            Step(reg.urn, reg.type, reg.name, op, applied, new, old, deps[reg.urn], changed, reg.delete_before_replace)
        )
    present = {s.urn for s in steps}
    for urn, old in state.resources.items():
        if urn not in present:
            steps.append(
                Step(
                    urn,
                    old["type"],
                    old["name"],
                    "delete",
                    is_command(old["type"]),
                    None,
                    old,
                    old.get("dependencies", []),
                )
            )
    return _topological(steps)


def _topological(steps: list[Step]) -> list[Step]:
    """Stable order for display: dependencies first, then by name."""
    by_urn = {s.urn: s for s in steps if s.op != "delete"}
    done: set[str] = set()
    ordered: list[Step] = []

    def visit(step: Step, seen: tuple[str, ...] = ()) -> None:
        if step.urn in done or step.urn in seen:
            return
        for dep in sorted(step.dependencies):
            if dep in by_urn:
                visit(by_urn[dep], (*seen, step.urn))
        done.add(step.urn)
        ordered.append(step)

    for step in sorted(by_urn.values(), key=lambda s: s.name):
        visit(step)
    ordered.extend(sorted((s for s in steps if s.op == "delete"), key=lambda s: s.name))
    return ordered


# --- apply --------------------------------------------------------------------------------------------------


@dataclass
class Execution:
    """One provider call that ran a command (or tried to)."""

    urn: str
    name: str
    op: str
    """The step's operation: create, update, replace or delete."""
    phase: str
    """Which command ran: create, update or delete."""
    command: str
    started: float
    ended: float = 0.0
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    combined: str = ""
    error: str | None = None
    logging: str = "stdoutAndStderr"

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ApplyResult:
    steps: list[Step]
    executions: list[Execution]
    status: dict[str, str]
    """urn -> ok | failed | skipped (not run because of an earlier failure)."""
    errors: list[str]
    console: list[str]
    stats: SshStats
    state: ReplayState
    started: float
    ended: float
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str:
        return "\n".join(self.errors)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def changed(self) -> list[Step]:
        return [s for s in self.steps if s.op != "same"]

    def ran(self, name: str) -> list[Execution]:
        return [e for e in self.executions if e.name == name]

    def recorded(self, name: str) -> dict[str, Any]:
        """The last applied inputs of a recorded-only resource (e.g. the Flux secret)."""
        for entry in self.state.resources.values():
            if entry["name"] == name:
                return entry["inputs"]
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A summary without any command output (safe to print or store)."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "ssh": asdict(self.stats),
            "steps": [
                {
                    "name": s.name,
                    "type": s.type,
                    "op": s.op,
                    "applied": s.applied,
                    "status": self.status.get(s.urn, "ok"),
                    "seconds": round(self.durations.get(s.urn, 0.0), 3),
                }
                for s in self.steps
            ],
        }


_LOG_STREAMS = {
    "stdout": {"stdout"},
    "stderr": {"stderr"},
    "stdoutAndStderr": {"stdout", "stderr"},
    "none": set(),
}


class _Engine:
    def __init__(
        self, runner: SshRunner, state: ReplayState, console: Console, continue_on_error: bool, max_workers: int
    ) -> None:
        self.runner = runner
        self.state = state
        self.console_fn = console
        self.continue_on_error = continue_on_error
        self.max_workers = max_workers
        self.lock = threading.Lock()
        self.executions: list[Execution] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.status: dict[str, str] = {}
        self.durations: dict[str, float] = {}

    def say(self, line: str) -> None:
        with self.lock:
            self.console.append(line)
            self.console_fn(line)

    # -- one provider call --
    def call(
        self, urn: str, name: str, op: str, phase: str, entry: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, str]:
        inputs = entry["inputs"]
        command = inputs.get(phase)
        if command is None:
            return dict(previous or {})  # nothing to run: the provider keeps the outputs it had
        logging = inputs.get("logging") or "stdoutAndStderr"
        streams = _LOG_STREAMS.get(logging, {"stdout", "stderr"})
        execution = Execution(urn, name, op, phase, command, time.time(), logging=logging)
        with self.lock:
            self.executions.append(execution)
        self.say(f"{name}: {op}: running its {phase} command")
        partial: dict[str, str] = {"stdout": "", "stderr": ""}

        def on_output(stream: str, text: str) -> None:
            if stream not in streams:
                return
            partial[stream] += text
            *lines, partial[stream] = partial[stream].split("\n")
            for line in lines:
                self.say(f"    {name}: {line}")

        add_previous = inputs.get("addPreviousOutputInEnv", True) is not False
        prev_env = {}
        if add_previous and previous:
            prev_env = {
                PULUMI_COMMAND_STDOUT: previous.get("stdout", ""),
                PULUMI_COMMAND_STDERR: previous.get("stderr", ""),
            }
        try:
            result = self.runner.run(
                inputs["connection"],
                command,
                stdin=inputs.get("stdin"),
                environment=inputs.get("environment"),
                previous=prev_env,
                on_output=on_output,
            )
        except CommandFailed as exc:
            execution.error = str(exc)
            execution.ended = time.time()
            message = str(exc)
            if message.startswith("Process exited with status "):
                execution.exit_code = int(message.split()[4].rstrip(":"))
                execution.combined = message.split(":\n", 1)[1] if ":\n" in message else ""
            raise
        finally:
            for stream in streams:
                if partial.get(stream):
                    self.say(f"    {name}: {partial[stream]}")
        execution.ended = time.time()
        execution.exit_code = result.exit_code
        execution.stdout, execution.stderr, execution.combined = result.stdout, result.stderr, result.combined
        for warning in result.warnings:
            self.say(f"warning: {name}: {warning}")
        self.say(f"{name}: {phase} command done ({execution.seconds:.1f}s)")
        return {"stdout": result.stdout, "stderr": result.stderr}

    # -- one engine step --
    def step(self, step: Step) -> list[dict[str, Any]]:
        """Run the step; returns old entries whose delete is deferred to the end (create-before-delete)."""
        deferred: list[dict[str, Any]] = []
        if not step.applied or step.op == "same":
            with self.lock:
                if step.op == "delete":
                    self.state.resources.pop(step.urn, None)
                else:
                    assert step.new is not None
                    outputs = step.old["outputs"] if step.old else {}
                    self.state.resources[step.urn] = {**step.new, "outputs": outputs}
            return deferred
        if step.op == "create":
            assert step.new is not None
            outputs = self.call(step.urn, step.name, "create", "create", step.new, None)
            self._put(step.urn, step.new, outputs)
        elif step.op == "update":
            assert step.new is not None and step.old is not None
            phase = "update" if step.new["inputs"].get("update") is not None else "create"
            outputs = self.call(step.urn, step.name, "update", phase, step.new, step.old.get("outputs"))
            self._put(step.urn, step.new, outputs)
        elif step.op == "replace":
            assert step.new is not None and step.old is not None
            if step.delete_before_replace:
                self.call(step.urn, step.name, "replace", "delete", step.old, step.old.get("outputs"))
                with self.lock:
                    self.state.resources.pop(step.urn, None)
                outputs = self.call(step.urn, step.name, "replace", "create", step.new, None)
                self._put(step.urn, step.new, outputs)
            else:
                outputs = self.call(step.urn, step.name, "replace", "create", step.new, None)
                self._put(step.urn, step.new, outputs)
                deferred.append({**step.old, "urn": step.urn})
        elif step.op == "delete":
            assert step.old is not None
            self.call(step.urn, step.name, "delete", "delete", step.old, step.old.get("outputs"))
            with self.lock:
                self.state.resources.pop(step.urn, None)
        return deferred

    def _put(self, urn: str, entry: dict[str, Any], outputs: dict[str, str]) -> None:
        with self.lock:
            self.state.resources[urn] = {**entry, "outputs": outputs}

    def delete_old(self, old: dict[str, Any]) -> None:
        try:
            self.call(old["urn"], old["name"], "replace", "delete", old, old.get("outputs"))
        except CommandFailed:
            with self.lock:
                self.state.pending_deletes.append(old)
            raise

    # -- scheduling --
    def schedule(
        self, nodes: dict[str, Callable[[], Any]], waits_for: dict[str, set[str]], ids: dict[str, str]
    ) -> list[Any]:
        """Run nodes as their prerequisites finish; after a failure start nothing new (Pulumi's default)."""
        results: list[Any] = []
        done_ok: set[str] = set()
        finished: set[str] = set()
        running: dict[Future[Any], str] = {}
        halted = False
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            while True:
                for key in list(nodes):
                    if key in finished or key in running.values():
                        continue
                    pre = waits_for.get(key, set()) & set(nodes)
                    if pre - finished:
                        continue
                    if halted or pre - done_ok:
                        finished.add(key)
                        self.status[ids[key]] = "skipped"
                        continue
                    started = time.time()

                    def timed(fn: Callable[[], Any] = nodes[key], key: str = key, started: float = started) -> Any:
                        try:
                            return fn()
                        finally:
                            with self.lock:
                                self.durations[ids[key]] = self.durations.get(ids[key], 0.0) + time.time() - started

                    running[pool.submit(timed)] = key
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    key = running.pop(future)
                    finished.add(key)
                    try:
                        results.append(future.result())
                    except CommandFailed as exc:
                        self.status[ids[key]] = "failed"
                        with self.lock:
                            self.errors.append(f"{ids[key]}: {exc}")
                        self.say(f"error: {exc}")
                        halted = halted or not self.continue_on_error
                        continue
                    done_ok.add(key)
                    self.status.setdefault(ids[key], "ok")
        return results


def _delete_order(entries: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """For deletes: a resource waits until every resource depending on it is gone."""
    waits: dict[str, set[str]] = {key: set() for key in entries}
    urn_to_keys: dict[str, list[str]] = {}
    for key, entry in entries.items():
        urn_to_keys.setdefault(entry["urn"], []).append(key)
    for key, entry in entries.items():
        for dep in entry.get("dependencies", []):
            for dep_key in urn_to_keys.get(dep, []):
                waits[dep_key].add(key)
    return waits


def apply(
    run: ProgramRun,
    state: ReplayState,
    *,
    runner: SshRunner | None = None,
    console: Console = print,
    continue_on_error: bool = False,
    max_workers: int = 16,
    hook: StepHook | None = None,
) -> ApplyResult:
    """Bring the host to what `run` registered; updates `state` in place, step by step."""
    runner = runner or SshRunner()
    started = time.time()
    steps = plan(run, state)
    unknown = [s.name for s in steps if s.applied and s.new is not None and contains_unknown(s.new["inputs"])]
    if unknown:
        raise ValueError(f"inputs still unknown (a preview run cannot be applied): {', '.join(unknown)}")
    engine = _Engine(runner, state, console, continue_on_error, max_workers)
    main = {s.urn: s for s in steps if s.op != "delete"}

    deferred: list[dict[str, Any]] = []

    def hooked(step: Step) -> None:
        if hook is not None:
            hook("start", step)
        replaced = engine.step(step)
        with engine.lock:
            deferred.extend(replaced)
        if hook is not None:
            hook("done", step)

    nodes: dict[str, Callable[[], Any]] = {urn: partial(hooked, s) for urn, s in main.items()}
    waits = {urn: set(s.dependencies) for urn, s in main.items()}
    try:
        engine.schedule(nodes, waits, {u: u for u in nodes})
    except Interrupted:
        # Pulumi keeps a replaced resource in state marked for deletion; the next update deletes it.
        state.pending_deletes.extend(deferred)
        raise
    if not engine.errors:
        _run_deletes(engine, steps, deferred)
    return _result(engine, steps, runner, state, started)


def _result(engine: _Engine, steps: list[Step], runner: SshRunner, state: ReplayState, started: float) -> ApplyResult:
    return ApplyResult(
        steps,
        engine.executions,
        engine.status,
        engine.errors,
        engine.console,
        runner.stats,
        state,
        started,
        time.time(),
        engine.durations,
    )


def _run_deletes(engine: _Engine, steps: list[Step], deferred: list[dict[str, Any]]) -> None:
    entries: dict[str, dict[str, Any]] = {}
    kinds: dict[str, Step | None] = {}
    for step in steps:
        if step.op == "delete":
            assert step.old is not None
            entries[f"delete:{step.urn}"] = {**step.old, "urn": step.urn}
            kinds[f"delete:{step.urn}"] = step
    retries, engine.state.pending_deletes = engine.state.pending_deletes, []
    for i, old in enumerate([*deferred, *retries]):
        entries[f"replaced:{i}:{old['urn']}"] = old
        kinds[f"replaced:{i}:{old['urn']}"] = None
    nodes: dict[str, Callable[[], Any]] = {}
    for key, entry in entries.items():
        kind = kinds[key]
        if kind is not None:
            nodes[key] = partial(engine.step, kind)
        elif is_command(entry["type"]):
            nodes[key] = partial(engine.delete_old, entry)
        else:
            nodes[key] = partial(lambda: None)
    engine.schedule(nodes, _delete_order(entries), {k: e["urn"] for k, e in entries.items()})


def destroy(
    state: ReplayState,
    *,
    runner: SshRunner | None = None,
    console: Console = print,
    max_workers: int = 16,
) -> ApplyResult:
    """Run every recorded delete in reverse dependency order (`pulumi destroy`)."""
    runner = runner or SshRunner()
    started = time.time()
    steps = _topological(
        [
            Step(urn, e["type"], e["name"], "delete", is_command(e["type"]), None, e, e.get("dependencies", []))
            for urn, e in state.resources.items()
        ]
    )
    engine = _Engine(runner, state, console, False, max_workers)
    _run_deletes(engine, steps, [])
    return _result(engine, steps, runner, state, started)
