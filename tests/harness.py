"""Run the Pulumi program under Pulumi's mocks and record every registration, as the engine would see it.

Each run is a fresh subprocess (the Pulumi runtime is process-global). The mocks act as engine plus
providers with state: a resource whose inputs did not change keeps its previous outputs, so a
random password survives a re-run exactly as it does in a real stack.
"""

from __future__ import annotations

import json
import os
import runpy
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "registry"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def reveal(value: Any) -> Any:
    """Strip every secret wrapper (what the provider sees after decryption)."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def contains_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unknown(v) for v in value)
    return False


@dataclass
class Registration:
    """One RegisterResource request: what the engine would diff and hand to a provider."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    dependencies: list[str]
    delete_before_replace: bool
    replace_on_changes: list[str]
    additional_secret_outputs: list[str]
    provider: str
    retain_on_delete: bool

    def value(self, key: str) -> Any:
        return reveal(self.inputs.get(key))


@dataclass
class ProgramRun:
    registrations: list[Registration]
    exports: dict[str, Any]
    state: dict[str, Any]
    error: str | None = None
    secret_exports: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    """Messages the program logged (pulumi.log), as `severity: message`: what the CLI shows under Diagnostics."""

    def by_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def named(self, name: str) -> Registration:
        matches = [r for r in self.registrations if r.name == name]
        assert matches, f"no resource named {name}; have {[r.name for r in self.registrations]}"
        return matches[0]

    @property
    def commands(self) -> list[Registration]:
        return self.by_type("command:remote:Command")


def run_program(
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    preview: bool = False,
    stack: str = "test",
    secret_keys: tuple[str, ...] = ("sshPrivateKey", "kubeconfig", "existingPushPassword", "s3AccessKey", "s3SecretKey"),
) -> ProgramRun:
    """Run __main__.py under mocks in a subprocess; `state` is the previous run's `state`."""
    request = {
        "config": {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        "secret_keys": list(secret_keys),
        "state": state or {},
        "preview": preview,
        "stack": stack,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_CONFIG")}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.harness"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"harness crashed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout)
    return ProgramRun(
        registrations=[Registration(**r) for r in out["registrations"]],
        exports=out["exports"],
        state=out["state"],
        error=out["error"],
        secret_exports=out["secret_exports"],
        logs=out["logs"],
    )


# --- everything below runs inside the subprocess -------------------------------------------------


MOCK_CLUSTER_IP = "10.43.0.42"
"""The ClusterIP a read Service has under the mocks."""


def _fake_outputs(
    typ: str, inputs: dict[str, Any], previous: dict[str, Any] | None, preview: bool, ignored: list[str]
) -> dict[str, Any]:
    """What a provider would return: inputs echoed, plus generated values that persist in state.

    `ignored` (ignore_changes) keeps those inputs at their previous values, as the engine does.
    """
    import bcrypt

    if previous is not None:
        for key in ignored:
            if key in previous["inputs"]:
                inputs[key] = previous["inputs"][key]
    outputs = dict(inputs)
    if typ == "random:index/randomPassword:RandomPassword":
        if previous is not None and reveal(previous["inputs"]) == reveal(inputs):
            return previous["outputs"]
        if preview:
            return outputs  # result and bcrypt_hash stay unknown, as in a real preview
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        password = "".join(secrets.choice(alphabet) for _ in range(int(inputs.get("length", 16))))
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()
        outputs.update(result=password, bcryptHash=hashed)
    elif typ.startswith("pulumi-python:dynamic"):
        return _dynamic_outputs(inputs, previous, preview)
    elif typ == "kubernetes:core/v1:Service" and not inputs:
        # A read of an existing Service (`Service.get`): Flux's webhook-receiver, as a cluster would have it.
        outputs.update(spec={"clusterIP": MOCK_CLUSTER_IP, "ports": [{"port": 80}]})
    elif typ == "command:remote:Command":
        if previous is not None:  # an update keeps the previous outputs, in preview too
            outputs.update(stdout=previous["outputs"].get("stdout", ""), stderr="")
        elif not preview:
            outputs.update(stdout="", stderr="")
    return outputs


def _dynamic_outputs(inputs: dict[str, Any], previous: dict[str, Any] | None, preview: bool) -> dict[str, Any]:
    """A dynamic resource: the engine's calls into the program's own provider (diff, then create or update)."""
    import base64

    import dill  # type: ignore[import-untyped]

    if contains_unknown(inputs):
        return previous["outputs"] if previous is not None else dict(inputs)
    provider = dill.loads(base64.b64decode(reveal(inputs["__provider"])))  # noqa: S301 - this run's own provider
    # Check first, with the previous inputs, as the engine does (it may add inputs the program did not set).
    news = provider.check(reveal(previous["inputs"]) if previous is not None else {}, reveal(inputs)).inputs
    if previous is not None:
        olds = reveal(previous["outputs"])
        if not provider.diff("id", olds, news).changes:
            return previous["outputs"]
        if preview:
            return {**inputs, **{k: v for k, v in news.items() if k not in inputs}}
        return {**provider.update("id", olds, news).outs, "__provider": inputs["__provider"]}
    if preview:
        return {**inputs, **{k: v for k, v in news.items() if k not in inputs}}
    return {**provider.create(news).outs, "__provider": inputs["__provider"]}


def _offline_scan(address: str, port: int) -> list[str]:
    """What ssh-keyscan would offer, without the network: a fixed ed25519 key per address and port (the program's
    host-key check runs at every check, previews too; the unit tier never dials the addresses in its stacks)."""
    import base64
    import hashlib

    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(f"{address}:{port}".encode()).digest()
    return [f"ssh-ed25519 {base64.b64encode(blob).decode()}"]


def _child_main() -> None:
    import logging

    import pulumi
    from pulumi.runtime import mocks as pmocks
    from pulumi.runtime import rpc
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    request = json.load(sys.stdin)
    preview: bool = request["preview"]
    previous_state: dict[str, Any] = request["state"]
    new_state: dict[str, Any] = {}
    registrations: list[dict[str, Any]] = []
    ignore_changes: dict[str, list[str]] = {}

    class StatefulMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
            key = f"{args.typ}::{args.name}"
            outputs = _fake_outputs(
                args.typ, args.inputs, previous_state.get(key), preview, ignore_changes.get(args.name, [])
            )
            new_state[key] = {"inputs": args.inputs, "outputs": outputs}
            return f"{args.name}-id", outputs

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            return {}, None

    class RecordingMonitor(pmocks.MockMonitor):
        def RegisterResource(self, req: Any) -> Any:  # noqa: N802 (gRPC method name)
            ignore_changes[req.name] = list(req.ignoreChanges)
            if req.type != "pulumi:pulumi:Stack":
                registrations.append(
                    {
                        "type": req.type,
                        "name": req.name,
                        "urn": self.make_urn(req.parent, req.type, req.name),
                        "parent": req.parent,
                        "custom": bool(req.custom),
                        "inputs": rpc.deserialize_properties(req.object, keep_unknowns=True),
                        "dependencies": list(req.dependencies),
                        "delete_before_replace": bool(req.deleteBeforeReplace),
                        "replace_on_changes": list(req.replaceOnChanges),
                        "additional_secret_outputs": list(req.additionalSecretOutputs),
                        "provider": req.provider,
                        "retain_on_delete": bool(req.retainOnDelete),
                    }
                )
            return super().RegisterResource(req)

    logs: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logs.append(f"{record.levelname.lower()}: {record.getMessage()}")

    logger = logging.getLogger("registry-harness")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    config = {f"{PROJECT}:{k}": v for k, v in request["config"].items()}
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{k}" for k in request["secret_keys"]])
    mocks = StatefulMocks()
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=request["stack"], preview=preview, monitor=RecordingMonitor(mocks), logger=logger
    )
    error = None
    exports: dict[str, Any] = {}
    secret_exports: list[str] = []
    sys.path.insert(0, str(ROOT))
    import components.host

    components.host.scan = _offline_scan  # the host-key check reads no real server under mocks
    try:
        def program() -> None:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

        _sync_await(run_pulumi_func(program))
        stack = pulumi.runtime.get_root_resource()
        for key, value in getattr(stack, "outputs", {}).items():
            out = pulumi.Output.from_input(value)
            exports[key] = _sync_await(out.future(with_unknowns=True))
            if _sync_await(out.is_secret()):
                secret_exports.append(key)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as data
        error = f"{type(exc).__name__}: {exc}"
    json.dump(
        {
            "registrations": registrations,
            "exports": exports,
            "secret_exports": secret_exports,
            "state": new_state,
            "error": error,
            "logs": logs,
        },
        sys.stdout,
        default=lambda o: UNKNOWN if type(o).__name__ == "Unknown" else str(o),
    )


if __name__ == "__main__":
    _child_main()
