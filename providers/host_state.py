"""What a component owns on the host, read back on `pulumi refresh`: a dynamic resource per component (an observer).

Each observer holds what the component expects on the host (file digests, modes and owners, containers, units); its
`read` runs one SSH probe (host/probe/observe.py, python3 on the host) and records what differs as `drift`. A drifted
observer makes its component's commands run again on the next `up`: `repairs` feeds their scripts' first line.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from typing import Any

import pulumi
import pulumi.dynamic

from renderers import shipped

PROBE = "probe/observe.py"
INPUTS = ("observer", "host", "expect", "repairs")
"""The observer's inputs; its outputs add `drift`."""
SHORT = 12
"""Hex digits of a digest shown in a drift message: enough to tell two apart, never the content."""


def probe_spec(expect: dict[str, Any]) -> dict[str, Any]:
    """What the probe reads for an expectation: paths, names and units only (no expected value, no secret)."""
    registries = expect.get("registries")
    return {
        "files": sorted(expect.get("files") or {}),
        "lines": dict(expect.get("lines") or {}),
        "registries": {"path": registries["path"], "entry": registries["entry"]} if registries else None,
        "containers": sorted(expect.get("containers") or {}),
        "units": sorted(expect.get("units") or {}),
    }


def _short(digest: Any) -> str:
    return str(digest)[:SHORT] if digest else "none"


def compare(expect: dict[str, Any], observed: dict[str, Any]) -> dict[str, str]:
    """What differs between the expectation and what the probe saw: one message per file, entry, container or unit.

    Contents show as the first hex digits of their sha256, never as text."""
    drift: dict[str, str] = {}
    seen_files = observed.get("files") or {}
    for path, want in sorted((expect.get("files") or {}).items()):
        got = seen_files.get(path)
        if got is None:
            drift[path] = "missing"
            continue
        if got.get("error"):
            drift[path] = f"unreadable: {got['error']}"
            continue
        found = []
        digests = want.get("sha256")
        if digests and got.get("sha256") not in digests:
            found.append(f"content sha256 {_short(got.get('sha256'))}... (expected {_short(digests[-1])}...)")
        for key in ("mode", "owner"):
            if want.get(key) and got.get(key) != want[key]:
                found.append(f"{key} {got.get(key)} (expected {want[key]})")
        if found:
            drift[path] = "; ".join(found)
    seen_lines = observed.get("lines") or {}
    for path, lines in sorted((expect.get("lines") or {}).items()):
        missing = [line for line in lines if not (seen_lines.get(path) or {}).get(line)]
        if missing:
            drift[f"{path} lines"] = "missing: " + " | ".join(missing)
    registries = expect.get("registries")
    if registries:
        got = observed.get("registries") or {}
        where = f"{registries['path']} configs.{registries['entry']}"
        if got.get("error"):
            drift[where] = str(got["error"])
        elif got.get("sha256") is None:
            drift[where] = "entry missing"
        elif got["sha256"] != registries["sha256"]:
            drift[where] = f"entry sha256 {_short(got['sha256'])}... (expected {_short(registries['sha256'])}...)"
    seen_containers = observed.get("containers") or {}
    for name, want in sorted((expect.get("containers") or {}).items()):
        got = seen_containers.get(name)
        if got is None:
            drift[f"container {name}"] = "missing"
            continue
        found = [
            f"{key} {json.dumps(got.get(key))} (expected {json.dumps(value)})"
            for key, value in sorted(want.items())
            if got.get(key) != value
        ]
        if found:
            drift[f"container {name}"] = "; ".join(found)
    seen_units = observed.get("units") or {}
    for unit, want in sorted((expect.get("units") or {}).items()):
        got = seen_units.get(unit) or {}
        found = [f"{got.get(key, 'unknown')} (expected {value})" for key, value in sorted(want.items()) if got.get(key) != value]
        if found:
            drift[f"unit {unit}"] = "; ".join(found)
    return drift


def known_hosts_line(address: str, port: int, host_key: str) -> str:
    return f"{address if port == 22 else f'[{address}]:{port}'} {host_key.strip()}\n"


class HostStateProvider(pulumi.dynamic.ResourceProvider):
    """Create and update record the expectation (no SSH); `read` probes the host; `check` carries the repair count
    that a drifted `read` raised into the inputs, so a preview already shows the commands that will run again."""

    probe_source: str
    private_key: str | None = None

    def __init__(self, probe_source: str) -> None:
        self.probe_source = probe_source

    def configure(self, req: pulumi.dynamic.ConfigureRequest) -> None:
        # The key comes from the stack's config at each run (never stored in this resource's state); None uses the
        # ssh-agent, as the command provider does.
        key = req.config.get("sshPrivateKey")
        self.private_key = str(key) if key else None

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        olds = _olds or {}
        return pulumi.dynamic.CheckResult({**news, "repairs": int(olds.get("repairs") or 0)}, [])

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(str(props["observer"]), self._recorded(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        changed = bool(olds.get("drift")) or any(olds.get(key) != news.get(key) for key in INPUTS)
        return pulumi.dynamic.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(self._recorded(news))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        drift = compare(props["expect"], self.probe(props["host"], probe_spec(props["expect"])))
        repairs = int(props.get("repairs") or 0)
        inputs = {key: props[key] for key in INPUTS if key in props}
        # A drifted host raises the repair count in the inputs: the next `up` updates this resource, and the commands
        # whose scripts carry the count run again, in the program's order.
        inputs["repairs"] = repairs + 1 if drift else repairs
        return pulumi.dynamic.ReadResult(id_, {**props, "drift": drift}, inputs)

    @staticmethod
    def _recorded(props: dict[str, Any]) -> dict[str, Any]:
        """The outputs after an up: the expectation (the commands that follow put the host there) and no drift."""
        return {**{key: props.get(key) for key in INPUTS}, "repairs": int(props.get("repairs") or 0), "drift": {}}

    def probe(self, host: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """One SSH session: the probe's source on stdin, the spec as its argument; JSON back."""
        address, port, user = str(host["address"]), int(host["port"]), str(host["user"])
        prefix = "" if user == "root" else "sudo -n "
        with tempfile.TemporaryDirectory(prefix="registry-probe-") as tmp:
            ssh = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]
            if self.private_key:
                key_file = os.path.join(tmp, "key")
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.private_key.rstrip("\n") + "\n")
                ssh += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
            if host.get("host_key"):
                known = os.path.join(tmp, "known_hosts")
                with open(known, "w", encoding="utf-8") as fh:
                    fh.write(known_hosts_line(address, port, str(host["host_key"])))
                ssh += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
            else:
                ssh += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
            remote = f"{prefix}python3 - {shlex.quote(json.dumps(spec, sort_keys=True))}"
            proc = subprocess.run(
                [*ssh, f"{user}@{address}", remote], input=self.probe_source, capture_output=True, text=True,
                timeout=120, check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"reading the host {address}:{port} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        observed: dict[str, Any] = json.loads(proc.stdout)
        return observed


class HostState(pulumi.dynamic.Resource):
    """What one component expects on the host, and on refresh what differs (`drift`); `repairs` counts the updates
    that followed a drifted refresh."""

    drift: pulumi.Output[dict[str, str]]
    repairs: pulumi.Output[int]

    def __init__(
        self, name: str, host: dict[str, Any], expect: pulumi.Input[dict[str, Any]], opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__(
            HostStateProvider(shipped.text(PROBE)),
            name,
            {"observer": name, "host": host, "expect": expect, "repairs": None, "drift": None},
            opts,
        )
