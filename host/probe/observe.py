"""Read back what the registry program owns on this host, for `pulumi refresh`: prints JSON on stdout.

argv[1] is a JSON spec: {"files": [PATH], "lines": {PATH: [LINE]}, "registries": {"path": PATH, "entry": NAME},
"containers": [NAME], "units": [UNIT]}. Standard library only (python3 on the server); run as root. Never prints a
file's content or a container's environment: digests, modes, owners and states only.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
from typing import Any


def file_state(path: str) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}
    return {"sha256": digest, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner": _name(pwd.getpwuid, st.st_uid),
            "group": _name(grp.getgrgid, st.st_gid)}


def _name(lookup: Any, ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def lines_present(path: str, wanted: list[str]) -> dict[str, bool]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            present = {line.rstrip("\r\n") for line in fh}
    except OSError:
        present = set()
    return {line: line in present for line in wanted}


def _quoted(text: str) -> tuple[str, str]:
    """A quoted YAML scalar at the start of `text`: (its value, what follows it)."""
    if text.startswith('"'):
        value, end = json.JSONDecoder().raw_decode(text)
        return str(value), text[end:]
    end = text.index("'", 1)
    while text[end + 1:end + 2] == "'":
        end = text.index("'", end + 2)
    return text[1:end].replace("''", "'"), text[end + 1:]


def _scalar(text: str) -> str:
    text = text.strip()
    return _quoted(text)[0] if text.startswith(('"', "'")) else text


def _split_key(line: str) -> tuple[str, str]:
    """`key: value` -> (key, value), the key maybe quoted (a registry name with a port holds a colon)."""
    if line.startswith(('"', "'")):
        key, rest = _quoted(line)
        rest = rest.strip()
        if not rest.startswith(":"):
            raise ValueError("not a block mapping")
        return key, rest[1:].strip()
    key, colon, value = line.partition(":")
    if not colon:
        raise ValueError("not a block mapping")
    return key.strip(), value.strip()


def parse_block_yaml(text: str) -> dict[str, Any]:
    """The block-mapping subset of YAML registries.yaml uses (nested `key: scalar`), for hosts without PyYAML."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        if line.startswith("-"):
            continue  # list items (mirrors' endpoints): never part of a `configs` entry
        key, value = _split_key(line)
        if value.startswith("#"):
            value = ""
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value:
            if value[0] not in "\"'":
                value = value.split(" #", 1)[0].strip()
            parent[key] = _scalar(value)
        else:
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
    return root


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def registries_entry(path: str, entry: str) -> dict[str, Any]:
    """The digest of `configs.<entry>` (canonical JSON), never the entry itself: it holds a password."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {"sha256": None}
    try:
        try:
            import yaml  # type: ignore[import-untyped]

            data = yaml.safe_load(text) or {}
        except ImportError:
            data = parse_block_yaml(text)
        found = ((data.get("configs") or {}) if isinstance(data, dict) else {}).get(entry)
    except Exception as exc:  # noqa: BLE001 - a file we cannot read is reported, not a crash
        return {"sha256": None, "error": f"unreadable: {type(exc).__name__}"}
    if found is None:
        return {"sha256": None}
    canonical = json.dumps(_canonical(found), sort_keys=True)
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest()}


def containers(names: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {name: None for name in names}
    if not names:
        return found
    proc = subprocess.run(["docker", "inspect", *names], capture_output=True, text=True, check=False)
    try:
        infos = json.loads(proc.stdout or "[]")
    except ValueError:
        infos = []
    for info in infos:
        name = str(info.get("Name", "")).lstrip("/")
        if name in found:
            found[name] = {
                "running": bool((info.get("State") or {}).get("Running")),
                "image": (info.get("Config") or {}).get("Image"),
                "network": (info.get("HostConfig") or {}).get("NetworkMode"),
                "restart": ((info.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name"),
            }
    return found


def unit_state(unit: str) -> dict[str, str]:
    def ask(verb: str) -> str:
        proc = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True, check=False)
        return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "unknown"

    return {"enabled": ask("is-enabled"), "active": ask("is-active")}


def observe(spec: dict[str, Any]) -> dict[str, Any]:
    registries = spec.get("registries")
    return {
        "files": {path: file_state(path) for path in spec.get("files", [])},
        "lines": {path: lines_present(path, wanted) for path, wanted in (spec.get("lines") or {}).items()},
        "registries": registries_entry(registries["path"], registries["entry"]) if registries else None,
        "containers": containers(list(spec.get("containers", []))),
        "units": {unit: unit_state(unit) for unit in spec.get("units", [])},
    }


if __name__ == "__main__":
    print(json.dumps(observe(json.loads(sys.argv[1])), sort_keys=True))
