"""Everything the program sends to the host (and the cluster), for a few representative stacks, as golden files.

    python -m tests.unit.golden_render --write    # regenerate tests/unit/golden/ from the current code

A file of host/ that a script carries (as it is, or quoted inside `sh -c '...'`) is recorded as
`<host/PATH sha256=...>`: host/ holds its text once, and the digest still pins it byte for byte.
The `defaults` case is stored whole. Every other case stores the list of what it renders (`files.txt`) and, for each
file that differs from the `defaults` one, a unified diff against it (`NAME.diff`), or the whole file (`NAME`) where
`defaults` has none: one copy of each script, and a case's golden set shows only what its settings change.

Each case runs the whole program under the mocks (tests/harness.py), so what is recorded is what the components
hand pulumi-command: every create/update/delete script and every stdin, with generated secrets (passwords, bcrypt
hashes, the rotation time) replaced by stable placeholders. The resource graph (type, name, parent) is recorded too.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from renderers.shipped import HOST
from tests.harness import ProgramRun, reveal, run_program
from tests.unit.support import RANDOM_PASSWORD, TYPICAL

GOLDEN = Path(__file__).parent / "golden"
COMMAND = "command:remote:Command"
GENERATIONS = "pulumi-python:dynamic:Resource::credentials-generations"
BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
HOOK_PATH = re.compile(r"/hook/[0-9a-f]{64}")
"""A Flux Receiver's webhook path: derived from a generated token."""
GRACE = 2 * 86400
USERS = ("robot_user", "k3s_pull")

EVERY_OPTION = {
    **TYPICAL,
    "sshUser": "root",
    "sshPort": "2222",
    "registryCaFile": "/etc/rancher/k3s/registry-ca.pem",
    "acmeCaUrl": "https://ca.test:14000/dir",
    "acmeCaRoot": "/etc/caddy/test-ca.pem",
    "k3sService": "k3s-agent",
    "dataDir": "/srv/data/registry@2",
    "caddySiteFile": "/etc/caddy/sites/registry+1.caddy",
    "retention": "true",
    "retentionRules": ["ruby-demo-app=10", "*=20"],
    "retentionKeepTags": ["latest", "release-.*"],
    "gcDeleteUntagged": "true",
    "backupKeep": "3",
    "backupDir": "/srv/backups/registry",
}
S3 = {
    **TYPICAL,
    "storage": "s3",
    "s3Endpoint": "http://127.0.0.1:8333",
    "s3Bucket": "registry",
    "s3RootDirectory": "/registry",
    "s3AccessKey": "AKIAGOLDEN",
    "s3SecretKey": "golden-only",
}
CASES: dict[str, list[dict[str, Any]]] = {
    "defaults": [TYPICAL],
    "every-option": [EVERY_OPTION],
    "replicas": [{**TYPICAL, "registryReplicas": "3"}],
    "s3": [S3],
    "registry3-s3-private-ca": [
        {
            **S3,
            "registryImage": "registry:3",
            "registryReplicas": "2",
            "s3Endpoint": "https://s3.example.com",
            "s3CaFile": "/etc/ssl/s3-ca.pem",
            "s3ForcePathStyle": "false",
        }
    ],
    "registry3": [{**TYPICAL, "registryImage": "registry:3.0.0", "gcSchedule": "", "backupSchedule": "daily"}],
    "no-k3s-flux-verify": [{**TYPICAL, "k3sTrust": "false", "flux": "false", "verify": "false"}],
    "takeover": [{**TYPICAL, "existingPushPassword": "ci-pushes-with-this"}],
    # Two more k3s nodes: an agent with the stack's SSH settings, a second server with its own.
    "nodes": [
        {
            **TYPICAL,
            "nodes": [
                {"name": "agent-1", "address": "10.0.0.21"},
                {"name": "server-2", "address": "10.0.0.12", "sshPort": 2222, "user": "root", "service": "k3s",
                 "registriesFile": "/etc/rancher/k3s/registries-2.yaml"},
            ],
        }
    ],
    # A second run after credentialRotation changed, with a grace period: the handover and the expiry timer.
    "rotation": [
        {**TYPICAL, "credentialGracePeriod": "2d"},
        {**TYPICAL, "credentialGracePeriod": "2d", "credentialRotation": "2"},
    ],
}
PREVIEW_LOGS = ("takeover",)
"""Cases whose preview messages (the takeover notice) are recorded as well."""


def _scrubber(runs: list[ProgramRun]) -> Callable[[str], str]:
    """Replace what each run generated (passwords, bcrypt hashes, the rotation's deadline) by stable placeholders."""
    values: dict[str, str] = {}
    for generation, run in enumerate(runs, start=1):
        for key, entry in run.state.items():
            if key.startswith(RANDOM_PASSWORD + "::"):
                outputs = reveal(entry["outputs"])
                name = key.split("::", 1)[1]
                values.setdefault(outputs["result"], f"<{name}.result@{generation}>")
                values.setdefault(outputs["bcryptHash"], f"<{name}.bcrypt@{generation}>")
                for user in USERS:  # the `auth` field of a Docker config
                    auth = base64.b64encode(f"{user}:{outputs['result']}".encode()).decode()
                    values.setdefault(auth, f"<base64({user}:{name}.result@{generation})>")
        rotated_at = int(reveal(run.state.get(GENERATIONS, {}).get("outputs", {})).get("rotated_at") or 0)
        if rotated_at:
            values.setdefault(str(rotated_at + GRACE), "<rotated_at+grace>")
    ordered = sorted(values, key=len, reverse=True)
    hashes: dict[str, str] = {}

    def scrub(text: str) -> str:
        for value in ordered:
            text = text.replace(value, values[value])
        text = HOOK_PATH.sub(lambda m: hashes.setdefault(m.group(0), f"/hook/<sha256-{len(hashes) + 1}>"), text)
        return BCRYPT.sub(lambda m: hashes.setdefault(m.group(0), f"<bcrypt-{len(hashes) + 1}>"), text)

    return scrub


def _record(run: ProgramRun, scrub: Callable[[str], str]) -> dict[str, str]:
    files: dict[str, str] = {}
    graph = []
    for r in run.registrations:
        parent = r.parent.rsplit("::", 1)[-1] if r.parent else ""
        graph.append(f"{r.type} {r.name} parent={parent}")
        if r.type == COMMAND:
            for field, suffix in (
                ("create", "create.sh"),
                ("update", "update.sh"),
                ("delete", "delete.sh"),
                ("stdin", "stdin"),
            ):
                value = r.value(field)
                if value:
                    files[f"{r.name}.{suffix}"] = scrub(value)
        elif r.type.startswith("kubernetes:") and r.custom and r.type != "pulumi:providers:kubernetes":
            files[f"{r.name}.json"] = scrub(json.dumps(reveal(r.inputs), indent=2, sort_keys=True)) + "\n"
    files["graph.txt"] = "\n".join(sorted(graph)) + "\n"  # registration order varies from run to run
    return files


def _shipped() -> list[tuple[str, str]]:
    """(text as a script carries it, placeholder) for every file of host/, longest first."""
    pairs = []
    for path in sorted(p for p in HOST.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        mark = f"<host/{path.relative_to(HOST)} sha256={hashlib.sha256(text.encode()).hexdigest()}"
        pairs += [(text, mark + ">"), (text.replace("'", "'\"'\"'"), mark + " quoted>")]
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def _marked(text: str) -> str:
    for shipped, mark in _shipped():
        text = text.replace(shipped, mark)
    return text


def _unmarked(text: str) -> str:
    """The placeholders back into the text of host/ (a file whose digest no longer matches keeps its placeholder)."""
    for shipped, mark in _shipped():
        text = text.replace(mark, shipped)
    return text


def render_case(case: str) -> dict[str, str]:
    runs: list[ProgramRun] = []
    state: dict[str, Any] | None = None
    for config in CASES[case]:
        run = run_program(config, state=state)
        if run.error:
            raise RuntimeError(f"{case}: {run.error}")
        runs.append(run)
        state = run.state
    files = {f"{case}/{name}": text for name, text in _record(runs[-1], _scrubber(runs)).items()}
    if case in PREVIEW_LOGS:
        preview = run_program(CASES[case][-1], preview=True)
        files[f"{case}/preview-logs.txt"] = (
            "\n".join(line for line in preview.logs if not line.startswith("debug:")) + "\n"
        )
    return files


def render_all() -> dict[str, str]:
    """Relative path under golden/ -> content, for every case."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(render_case, CASES))
    return {path: text for files in results for path, text in sorted(files.items())}


BASE = "defaults"


def encode(rendered: dict[str, str]) -> dict[str, str]:
    """What --write stores for `rendered`: the base case whole, every other case as its file list and diffs to it."""
    rendered = {path: _marked(text) for path, text in rendered.items()}
    stored = {path: text for path, text in rendered.items() if path.startswith(f"{BASE}/")}
    cases = sorted({path.split("/", 1)[0] for path in rendered} - {BASE})
    for case in cases:
        names = sorted(path.split("/", 1)[1] for path in rendered if path.startswith(f"{case}/"))
        stored[f"{case}/files.txt"] = "".join(f"{name}\n" for name in names)
        for name in names:
            text, base = rendered[f"{case}/{name}"], rendered.get(f"{BASE}/{name}")
            if base is None:
                stored[f"{case}/{name}"] = text
            elif text != base:
                diff = difflib.unified_diff(
                    base.splitlines(keepends=True), text.splitlines(keepends=True), f"{BASE}/{name}", f"{case}/{name}"
                )
                stored[f"{case}/{name}.diff"] = "".join(
                    line if line.endswith("\n") else line + NO_NEWLINE for line in diff
                )
    return stored


NO_NEWLINE = "\n\\ No newline at end of file\n"
HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def _patch(base: str, diff: str) -> str:
    """Apply a unified diff `encode` wrote to `base`."""
    source, out, pos, last = base.splitlines(keepends=True), [], 0, ""
    for line in diff.splitlines(keepends=True)[2:]:
        hunk = HUNK.match(line)
        if hunk:
            start = int(hunk[1]) - (0 if hunk[2] == "0" else 1)
            out += source[pos:start]
            pos = start
        elif line.startswith("\\"):
            if last in " +":
                out[-1] = out[-1].removesuffix("\n")
        else:
            last, body = line[0], line[1:]
            if last in " -":
                if source[pos].rstrip("\n") != body.rstrip("\n"):
                    raise ValueError(f"diff does not apply at line {pos + 1}: {body!r}")
                pos += 1
            if last in " +":
                out.append(body)
    return "".join(out + source[pos:])


def decode(stored: dict[str, str]) -> dict[str, str]:
    """The renders `stored` stands for: what `encode` took, with host/ as it is now in place of its placeholders."""
    marked = {path: text for path, text in stored.items() if path.startswith(f"{BASE}/")}
    for listing in (path for path in stored if path.endswith("/files.txt")):
        case = listing.split("/", 1)[0]
        for name in stored[listing].splitlines():
            whole, diff, base = (
                stored.get(f"{case}/{name}"),
                stored.get(f"{case}/{name}.diff"),
                marked.get(f"{BASE}/{name}"),
            )
            if whole is not None:
                marked[f"{case}/{name}"] = whole
            elif base is not None:
                marked[f"{case}/{name}"] = _patch(base, diff) if diff is not None else base
    return {path: _unmarked(text) for path, text in marked.items()}


def on_disk() -> dict[str, str]:
    return {str(p.relative_to(GOLDEN)): p.read_text() for p in sorted(GOLDEN.rglob("*")) if p.is_file()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="rewrite tests/unit/golden/ from the current code")
    args = parser.parse_args(argv)
    if not args.write:
        rendered, golden = render_all(), decode(on_disk())
        differ = sorted(set(rendered) ^ set(golden) | {p for p, t in rendered.items() if golden.get(p) != t})
        print("\n".join(differ) or "golden files match")
        return 1 if differ else 0
    rendered = encode(render_all())
    for old in GOLDEN.rglob("*"):
        if old.is_file() and str(old.relative_to(GOLDEN)) not in rendered:
            old.unlink()
    for path, text in rendered.items():
        target = GOLDEN / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    print(f"{len(rendered)} golden files written under {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
