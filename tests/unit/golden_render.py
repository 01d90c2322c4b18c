"""Everything the program sends to the host (and the cluster), for a few representative stacks, as golden files.

    python -m tests.unit.golden_render --write    # regenerate tests/unit/golden/ from the current code

Each case runs the whole program under the mocks (tests/harness.py), so what is recorded is what the components
hand pulumi-command: every create/update/delete script and every stdin, with generated secrets (passwords, bcrypt
hashes, the rotation time) replaced by stable placeholders. The resource graph (type, name, parent) is recorded too.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.harness import ProgramRun, reveal, run_program
from tests.unit.support import RANDOM_PASSWORD, TYPICAL

GOLDEN = Path(__file__).parent / "golden"
COMMAND = "command:remote:Command"
GENERATIONS = "pulumi-python:dynamic:Resource::credentials-generations"
BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
GRACE = 2 * 86400
USERS = ("robot_user", "k3s_pull")

EVERY_OPTION = {
    **TYPICAL, "sshUser": "root", "sshPort": "2222", "registryCaFile": "/etc/rancher/k3s/registry-ca.pem",
    "acmeCaUrl": "https://ca.test:14000/dir", "acmeCaRoot": "/etc/caddy/test-ca.pem", "k3sService": "k3s-agent",
    "dataDir": "/srv/data/registry@2", "caddySiteFile": "/etc/caddy/sites/registry+1.caddy", "retention": "true",
    "retentionRules": ["ruby-demo-app=10", "*=20"], "retentionKeepTags": ["latest", "release-.*"],
    "gcDeleteUntagged": "true", "backupKeep": "3", "backupDir": "/srv/backups/registry",
}
S3 = {
    **TYPICAL, "storage": "s3", "s3Endpoint": "http://127.0.0.1:8333", "s3Bucket": "registry",
    "s3RootDirectory": "/registry", "s3AccessKey": "AKIAGOLDEN", "s3SecretKey": "golden-only",
}
CASES: dict[str, list[dict[str, Any]]] = {
    "defaults": [TYPICAL],
    "every-option": [EVERY_OPTION],
    "replicas": [{**TYPICAL, "registryReplicas": "3"}],
    "s3": [S3],
    "registry3-s3-private-ca": [
        {**S3, "registryImage": "registry:3", "registryReplicas": "2", "s3Endpoint": "https://s3.example.com",
         "s3CaFile": "/etc/ssl/s3-ca.pem", "s3ForcePathStyle": "false"}
    ],
    "registry3": [{**TYPICAL, "registryImage": "registry:3.0.0", "gcSchedule": "", "backupSchedule": "daily"}],
    "no-k3s-flux-verify": [{**TYPICAL, "k3sTrust": "false", "flux": "false", "verify": "false"}],
    "takeover": [{**TYPICAL, "existingPushPassword": "ci-pushes-with-this"}],
    # A second run after credentialRotation changed, with a grace period: the handover and the expiry timer.
    "rotation": [{**TYPICAL, "credentialGracePeriod": "2d"}, {**TYPICAL, "credentialGracePeriod": "2d", "credentialRotation": "2"}],
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
        return BCRYPT.sub(lambda m: hashes.setdefault(m.group(0), f"<bcrypt-{len(hashes) + 1}>"), text)

    return scrub


def _record(run: ProgramRun, scrub: Callable[[str], str]) -> dict[str, str]:
    files: dict[str, str] = {}
    graph = []
    for r in run.registrations:
        parent = r.parent.rsplit("::", 1)[-1] if r.parent else ""
        graph.append(f"{r.type} {r.name} parent={parent}")
        if r.type == COMMAND:
            for field, suffix in (("create", "create.sh"), ("update", "update.sh"), ("delete", "delete.sh"), ("stdin", "stdin")):
                value = r.value(field)
                if value:
                    files[f"{r.name}.{suffix}"] = scrub(value)
        elif r.type.startswith("kubernetes:") and r.custom and r.type != "pulumi:providers:kubernetes":
            files[f"{r.name}.json"] = scrub(json.dumps(reveal(r.inputs), indent=2, sort_keys=True)) + "\n"
    files["graph.txt"] = "\n".join(sorted(graph)) + "\n"  # registration order varies from run to run
    return files


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
        files[f"{case}/preview-logs.txt"] = "\n".join(line for line in preview.logs if not line.startswith("debug:")) + "\n"
    return files


def render_all() -> dict[str, str]:
    """Relative path under golden/ -> content, for every case."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(render_case, CASES))
    return {path: text for files in results for path, text in sorted(files.items())}


def on_disk() -> dict[str, str]:
    return {str(p.relative_to(GOLDEN)): p.read_text() for p in sorted(GOLDEN.rglob("*")) if p.is_file()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="rewrite tests/unit/golden/ from the current code")
    args = parser.parse_args(argv)
    rendered = render_all()
    if not args.write:
        differ = sorted(set(rendered) ^ set(on_disk()) | {p for p, t in rendered.items() if on_disk().get(p) != t})
        print("\n".join(differ) or "golden files match")
        return 1 if differ else 0
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
