"""The real Pulumi engine, driven through `pulumi.automation`: the CLI and plugins `scripts/toolchain.sh` built (or an
installed `pulumi`), a `file://` backend and a passphrase secrets provider, all in a folder of the caller's.

Nothing here imitates the engine: every `up`, `preview`, `refresh` and `destroy` is the Pulumi CLI running this
program, its providers and its dynamic provider. What this module adds is bookkeeping for tests: which command ran
in which phase (from the engine's own event stream), everything the CLI printed, and a way to kill the CLI mid-update
as a crashed CI runner would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pulumi import automation as auto

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "registry"
TOOLCHAIN = ROOT / "scripts" / "toolchain.sh"
# Settings that must be stored with --secret (the program wraps them either way).
SECRET_KEYS = frozenset({"sshPrivateKey", "existingPushPassword", "kubeconfig", "s3AccessKey", "s3SecretKey"})
# What a project folder needs from the repository: the program, its packages, the files it ships to the host and the
# dependency list.
PROGRAM_FILES = ("__main__.py", "components", "providers", "renderers", "settings", "host", "requirements.txt")


class EngineError(RuntimeError):
    """The engine could not be found or set up."""


@dataclass(frozen=True)
class Toolchain:
    bin_dir: Path
    """Holds `pulumi` and the Python language host."""
    plugins_dir: Path | None
    """The built provider plugins; None when an installed `pulumi` is used (it brings or downloads its own)."""

    @classmethod
    def find(cls) -> Toolchain:
        """The installed `pulumi`, or the complete build of `scripts/toolchain.sh build`."""
        bin_dir = _toolchain("bin")
        if bin_dir is None:
            raise EngineError("no Pulumi engine: run `bash scripts/toolchain.sh build` (or install the pulumi CLI)")
        plugins = _toolchain("plugins")
        return cls(Path(bin_dir), Path(plugins) if plugins else None)

    @property
    def pulumi(self) -> Path:
        return self.bin_dir / "pulumi"


def _toolchain(what: str) -> str | None:
    proc = subprocess.run(["bash", str(TOOLCHAIN), what], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


class Engine:
    """One PULUMI_HOME and one `file://` backend under `base` (created 0700); the passphrase lives in a 0600 file."""

    def __init__(self, base: Path, toolchain: Toolchain | None = None) -> None:
        self.base = base
        self.toolchain = toolchain or Toolchain.find()
        self.home = base / "home"
        self.backend = base / "state"
        self.passphrase_file = base / "passphrase"
        for d in (base, self.home, self.backend):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.passphrase_file.exists():
            fd = os.open(self.passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(24).hex())
        self._install_plugins()

    def env(self) -> dict[str, str]:
        """The CLI's environment: offline, our home, our backend, our passphrase, our binaries first on PATH."""
        return {
            "PULUMI_HOME": str(self.home),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(self.passphrase_file),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true" if self.toolchain.plugins_dir else "false",
            "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            "PATH": f"{self.toolchain.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def cli(
        self, args: Iterable[str], cwd: Path, *, stdin: str | None = None, check: bool = True, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        """The CLI itself, for what the Automation API does not offer (stack export --show-secrets, plugin ls)."""
        env = {**os.environ, **self.env()}
        proc = subprocess.run(
            [str(self.toolchain.pulumi), *args, "--non-interactive"] if args else [str(self.toolchain.pulumi)],
            cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise EngineError(f"pulumi {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc

    def _install_plugins(self) -> None:
        """Put the built providers into PULUMI_HOME at the version each reports, so nothing is downloaded."""
        plugins = self.toolchain.plugins_dir
        if plugins is None:
            return
        pins = dict(line.split("=", 1) for line in (_toolchain("pins") or "").split())
        for name in ("command", "random", "kubernetes"):
            version = pins[name]
            if (self.home / "plugins" / f"resource-{name}-v{version}").is_dir():
                continue
            self.cli(
                ["plugin", "install", "resource", name, version, "--file", str(plugins / f"pulumi-resource-{name}")],
                cwd=self.base,
            )

    @property
    def command(self) -> auto.PulumiCommand:
        return auto.PulumiCommand(root=str(self.toolchain.bin_dir.parent), skip_version_check=True)


def make_project(dest: Path, venv: Path | None = None, source: Path = ROOT) -> Path:
    """A project folder for one or more stacks: Pulumi.yaml (its virtualenv pointed at `venv`, default the
    repository's), and links to the program in `source` (default this checkout; another tree, such as an older
    commit's, to run that code). Stack files and anything Pulumi writes stay in `dest`, never in `source`. Calling it
    again with another `source` points the same folder, and so its stacks, at that code."""
    dest.mkdir(parents=True, exist_ok=True)
    text = (source / "Pulumi.yaml").read_text()
    text = text.replace("virtualenv: .venv", f"virtualenv: {venv or ROOT / '.venv'}", 1)
    (dest / "Pulumi.yaml").write_text(text)
    for name in PROGRAM_FILES:
        link = dest / name
        if link.is_symlink() and link.resolve() != (source / name).resolve():
            link.unlink()
        if not link.exists() and not link.is_symlink() and (source / name).exists():
            link.symlink_to(source / name)
    return dest


def archive(commit: str, dest: Path) -> Path:
    """The tree of `commit` (tracked files only) from `git archive`, unpacked into `dest`; the checkout itself is not
    touched. Fails naming the commit when this clone lacks it (a shallow clone)."""
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True, check=False)
    if known.returncode != 0:
        raise EngineError(f"commit {commit} is not in this clone (a shallow clone?): fetch main's history to run this")
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(tar.stdout)) as tree:
        tree.extractall(dest, filter="data")
    return dest


def previous_version(dest: Path) -> Path:
    """This program as it was before `pulumi refresh` could see the host (the parent of the commit that added the
    observers, providers/host_state.py), unpacked from git into `dest`."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "providers/host_state.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    if not added:
        raise EngineError("providers/host_state.py is not committed yet: no previous version to compare with")
    return archive(f"{added[-1]}^", dest)


# --- runs ------------------------------------------------------------------------------------------------------------

PHASES = {
    auto.OpType.CREATE: "create", auto.OpType.CREATE_REPLACEMENT: "create",
    auto.OpType.UPDATE: "update",
    auto.OpType.DELETE: "delete", auto.OpType.DELETE_REPLACED: "delete",
}
STEP_OPS = {"create": "create", "update": "update", "delete": "delete", "replace": "replace",
            "create-replacement": "replace", "delete-replaced": "replace", "same": "same"}


@dataclass
class Execution:
    """One finished step of a command resource, from the engine's events."""

    name: str
    phase: str
    """create, update or delete (a replacement is a delete and a create)."""
    ok: bool
    stdout: str | None = None
    """The command's stdout as the engine recorded it ("[secret]" when secret)."""
    started: int = 0
    ended: int = 0
    """Positions of the step's start and end in the run's event stream: the engine's own order of events."""
    seconds: float = 0.0
    """Wall time between the two events as this process received them (for context, not for ordering)."""


Hook = Callable[[str, str, str], None]
"""hook(event, resource name, op): event is "before" (step starts) or "after" (step done); runs on the event thread."""


@dataclass
class Run:
    """What one CLI run did."""

    kind: str
    ok: bool = False
    error: str = ""
    printed: list[str] = field(default_factory=list)
    """Every line the CLI printed to stdout, and its error output when it failed."""
    executions: list[Execution] = field(default_factory=list)
    ops: dict[str, str] = field(default_factory=dict)
    """resource name -> create/update/replace/delete/same (the engine's step, per resource)."""
    changes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def ran(self, name: str) -> list[Execution]:
        return [e for e in self.executions if e.name == name]

    def changed(self) -> dict[str, str]:
        return {n: op for n, op in self.ops.items() if op != "same"}

    @property
    def text(self) -> str:
        return "\n".join(self.printed)


def resource_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


class _Recorder:
    def __init__(self, run: Run, hook: Hook | None) -> None:
        self.run, self.hook = run, hook
        self.lock = threading.Lock()
        self.seq = 0
        self.started: dict[tuple[str, str], tuple[int, float]] = {}

    def output(self, line: str) -> None:
        with self.lock:
            self.run.printed.append(line)

    def event(self, ev: auto.EngineEvent) -> None:
        with self.lock:
            self.seq += 1
        if ev.resource_pre_event is not None:
            md = ev.resource_pre_event.metadata
            self._op(md)
            self.started[(md.urn, md.op.value)] = (self.seq, time.monotonic())
            if self.hook:
                self.hook("before", resource_name(md.urn), md.op.value)
        elif ev.res_outputs_event is not None:
            md = ev.res_outputs_event.metadata
            self._op(md)
            self._execution(md, ok=True)
            if self.hook:
                self.hook("after", resource_name(md.urn), md.op.value)
        elif ev.res_op_failed_event is not None:
            self._execution(ev.res_op_failed_event.metadata, ok=False)

    def _op(self, md: auto.StepEventMetadata) -> None:
        op = STEP_OPS.get(md.op.value)
        name = resource_name(md.urn)
        if op and not (op == "same" and name in self.run.ops):
            self.run.ops[name] = op

    def _execution(self, md: auto.StepEventMetadata, ok: bool) -> None:
        phase = PHASES.get(md.op)
        if phase is None or md.type != "command:remote:Command":
            return
        state = md.new if phase != "delete" else md.old
        if phase == "delete" and not ((state.inputs if state else None) or {}).get("delete"):
            return  # a command without a delete script: the provider runs nothing on the host
        outputs = (state.outputs if state else None) or {}
        stdout = outputs.get("stdout")
        started, at = self.started.get((md.urn, md.op.value), (self.seq, time.monotonic()))
        with self.lock:
            self.run.executions.append(
                Execution(
                    resource_name(md.urn), phase, ok, stdout if isinstance(stdout, str) else None,
                    started=started, ended=self.seq, seconds=time.monotonic() - at,
                )
            )


def kill_cli(tree: bool = False) -> list[int]:
    """SIGKILL the `pulumi` CLI this process started (a crashed CI runner), with `tree` every process under it too
    (language host, providers: a cancelled runner's whole process group). Returns the pids killed."""
    clis = [pid for pid in _descendants(os.getpid()) if _exe(pid) == "pulumi"]
    victims = [*clis, *(d for cli in clis for d in _descendants(cli))] if tree else clis
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def _exe(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Stack:
    """One stack of this program in a project folder, on an Engine."""

    def __init__(self, engine: Engine, name: str, project_dir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.engine, self.name, self.project_dir = engine, name, project_dir
        opts = auto.LocalWorkspaceOptions(
            work_dir=str(project_dir), pulumi_command=engine.command, env_vars=engine.env(),
            secrets_provider="passphrase",
        )
        self.stack = auto.create_or_select_stack(stack_name=name, work_dir=str(project_dir), opts=opts)
        if config:
            self.configure(config)

    def configure(self, config: Mapping[str, Any]) -> None:
        """Set `registry:<key>` values as a user would: `pulumi config set`, secret keys with --secret from stdin
        (never on a command line)."""
        plain = {
            f"{PROJECT}:{key}": auto.ConfigValue(value=value if isinstance(value, str) else json.dumps(value))
            for key, value in config.items()
            if key not in SECRET_KEYS and not isinstance(value, (list, dict))
        }
        if plain:
            self.stack.set_all_config(plain)
        # A list or map (allowlist, retentionRules) is stored as one, as `pulumi config set --path` would: the
        # project's typed settings refuse a JSON text in its place.
        structured = {
            f"{PROJECT}:{key}": {"value": json.dumps(value), "objectValue": value, "secret": False}
            for key, value in config.items()
            if key not in SECRET_KEYS and isinstance(value, (list, dict))
        }
        if structured:
            self.engine.cli(
                ["config", "set-all", "--json", json.dumps(structured), "--stack", self.name], cwd=self.project_dir
            )
        for key in sorted(SECRET_KEYS & set(config)):
            self.engine.cli(
                ["config", "set", "--secret", f"{PROJECT}:{key}", "--stack", self.name],
                cwd=self.project_dir, stdin=str(config[key]),
            )

    def remove_config(self, *keys: str) -> None:
        self.stack.remove_all_config([f"{PROJECT}:{k}" for k in keys])

    def _run(self, kind: str, call: Callable[..., Any], hook: Hook | None = None, **kwargs: Any) -> Run:
        run = Run(kind)
        rec = _Recorder(run, hook)
        t0 = time.monotonic()
        try:
            result = call(on_output=rec.output, on_event=rec.event, color="never", **kwargs)
            summary = getattr(result, "summary", None)
            changes = getattr(result, "change_summary", None) or (summary.resource_changes if summary else None)
            run.changes = {str(k.value if hasattr(k, "value") else k): v for k, v in (changes or {}).items()}
            run.ok = True
        except auto.CommandError as exc:
            run.error = str(exc)
            run.printed.extend(run.error.splitlines())
        run.seconds = time.monotonic() - t0
        return run

    def up(self, hook: Hook | None = None, **kwargs: Any) -> Run:
        return self._run("up", self.stack.up, hook, show_secrets=False, **kwargs)

    def preview(self, **kwargs: Any) -> Run:
        return self._run("preview", self.stack.preview, **kwargs)

    def refresh(self, **kwargs: Any) -> Run:
        return self._run("refresh", self.stack.refresh, show_secrets=False, **kwargs)

    def destroy(self, **kwargs: Any) -> Run:
        return self._run("destroy", self.stack.destroy, show_secrets=False, **kwargs)

    def outputs(self) -> dict[str, Any]:
        """Stack outputs, secrets in clear (as CI reads them with --show-secrets)."""
        return {k: v.value for k, v in self.stack.outputs().items()}

    def export(self, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "export", "--stack", self.name] + (["--show-secrets"] if show_secrets else [])
        return json.loads(self.engine.cli(args, cwd=self.project_dir).stdout)

    def resources(self, show_secrets: bool = False) -> dict[str, dict[str, Any]]:
        """name -> the state entry of each resource (outputs, inputs) of the current deployment; with show_secrets,
        each secret is its value (the export wraps it as {SECRET_SIG: ..., "plaintext": <JSON>})."""
        deployment = self.export(show_secrets)["deployment"]
        if show_secrets:
            deployment = reveal(deployment)
        found: dict[str, dict[str, Any]] = {}
        for r in deployment.get("resources") or []:
            # A replaced resource whose delete is still pending (an interrupted replacement) sits after its
            # replacement in the list: the live entry wins.
            if not (r.get("delete") and resource_name(r["urn"]) in found):
                found[resource_name(r["urn"])] = r
        return found

    def generated_secrets(self) -> dict[str, str]:
        """Every generated secret in the state: passwords, their bcrypt hashes, the HTTP secret."""
        found = {}
        for name, entry in self.resources(show_secrets=True).items():
            if entry.get("type") == "random:index/randomPassword:RandomPassword":
                outputs = entry.get("outputs") or {}
                found[f"{name} password"] = outputs["result"]
                if outputs.get("bcryptHash"):
                    found[f"{name} hash"] = outputs["bcryptHash"]
        return found

    def remove(self) -> None:
        """Forget the stack (its state and stack file); nothing on the host is touched."""
        self.stack.workspace.remove_stack(self.name, force=True)
        stack_file = self.project_dir / f"Pulumi.{self.name}.yaml"
        if stack_file.exists():
            stack_file.unlink()


SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""The key that marks a secret in a state export."""


def reveal(value: Any) -> Any:
    """`value` with every exported secret ({SECRET_SIG: ..., "plaintext": JSON}) replaced by what it holds."""
    if isinstance(value, dict):
        if SECRET_SIG in value and "plaintext" in value:
            return reveal(json.loads(value["plaintext"]))
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value

