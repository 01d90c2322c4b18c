"""Program evaluation under Pulumi's mocks (preview mode): the real program vs a minimal Pulumi program, same mocks.

    .venv/bin/python -m bench.evaluate [--rounds 12] [--importtime-runs 3]

Each variant is the harness's subprocess itself (`python -m tests.harness`, what tests.harness.run_program spawns,
fed the same JSON request on stdin), timed from spawn to exit, rounds interleaved. The minimal programs run through
bench/_harness_child.py, which is the same child code pointed at another program folder. Then `python -X importtime`
of the real program: which imports dominate, and a measured variant of one proposal (a copy of the program, never
the program itself).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import ROOT, Series, log, machine_line, rotated, scratch, write_report

TYPICAL = {
    "host": "203.0.113.10",
    "domain": "registry.example.com",
    "acmeEmail": "ops@example.com",
    "allowlist": ["198.51.100.0/24"],
    "fluxImages": ["ruby-demo-app", "team/api"],
    "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nbench-only\n-----END OPENSSH PRIVATE KEY-----\n",
    "kubeconfig": "apiVersion: v1\nkind: Config\nclusters: []\n",
}
"""A typical stack (Flux on, the default); the dev stack turns Flux off."""

MINIMAL_PROGRAM = """\
import pulumi
import pulumi_random as random

password = random.RandomPassword("password", length=32, special=False)
pulumi.export("password", password.result)
"""

# Proposal measured on a COPY of the program: register the Flux secret with the same type token, inputs and options
# as k8s.core.v1.Secret does, but through the generic pulumi.CustomResource, so that `k8s.core.v1` (the whole
# core API group: ~90 modules and a 2.5 MB _inputs.py) is never imported. evaluate.py checks that the engine sees
# exactly the same registration.
TYPED_BLOCK = """\
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.secret_name, namespace=args.namespace),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": config_json},
            opts=in_cluster,
        )
"""
GENERIC_BLOCK = """\
        secret = pulumi.CustomResource(
            "kubernetes:core/v1:Secret",
            f"{name}-secret",
            {
                "apiVersion": "v1",
                "data": None,
                "immutable": None,
                "kind": "Secret",
                "metadata": {"name": args.secret_name, "namespace": args.namespace},
                "stringData": pulumi.Output.secret({".dockerconfigjson": config_json}),
                "type": "kubernetes.io/dockerconfigjson",
            },
            opts=pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions.merge(k8s._utilities.get_resource_opts_defaults(), in_cluster),
                pulumi.ResourceOptions(additional_secret_outputs=["data", "stringData"]),
            ),
        )
"""


def request(config: dict[str, Any], preview: bool = True, state: dict[str, Any] | None = None) -> str:
    """The JSON tests.harness.run_program writes to its child's stdin."""
    return json.dumps({
        "config": {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        "secret_keys": ["sshPrivateKey", "kubeconfig"],
        "state": state or {},
        "preview": preview,
        "stack": "test",
    })


def child_output(argv: list[str], stdin: str) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one harness child."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)  # noqa: S603
    wall = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), proc.stdout


def run_child(argv: list[str], stdin: str, expect_resources: bool = True) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one harness child; its JSON answer must report no error."""
    wall, cpu, stdout = child_output(argv, stdin)
    if expect_resources:
        out = json.loads(stdout)
        if out["error"] or not out["registrations"]:
            raise RuntimeError(f"{' '.join(argv)}: error {out['error']!r}, {len(out['registrations'])} registrations")
    return wall, cpu


def same_registrations(a: str, b: str) -> str:
    """Compare the Kubernetes registrations (what the proposal touches) of two harness answers the way the engine
    would see them: type, name, parent, inputs, options. (Other resources carry per-run random values.)"""
    def key(out: str) -> list[tuple[str, str, str, str, str]]:
        regs = [r for r in json.loads(out)["registrations"] if r["type"].startswith(("kubernetes:", "registry:index:Flux"))]
        return sorted((r["type"], r["name"], r["parent"], json.dumps(r["inputs"], sort_keys=True),
                       json.dumps({k: r[k] for k in ("dependencies", "additional_secret_outputs", "provider",
                                                      "delete_before_replace", "replace_on_changes")}, sort_keys=True))
                      for r in regs)

    ka, kb = key(a), key(b)
    if ka == kb:
        return f"identical ({len(ka)} Kubernetes registrations: types, names, parents, inputs, secret outputs, options)"
    diff = [x for x in ka if x not in kb][:2] + [x for x in kb if x not in ka][:2]
    return "DIFFERENT: " + "; ".join(" ".join(x)[:300] for x in diff)


_IMPORT_RE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def importtime(argv: list[str], stdin: str) -> list[tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, module) rows of `python -X importtime`."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], input=stdin, capture_output=True, text=True,  # noqa: S603
                          cwd=ROOT, timeout=300, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = _IMPORT_RE.match(line)
        if m:
            rows.append((int(m[1]), int(m[2]), (len(m[3]) - 1) // 2, m[4]))
    return rows


def import_report(runs: list[list[tuple[int, int, int, str]]], wall: float, top: int = 12) -> list[str]:
    def med(counter_list: list[Counter[str]], key: str) -> float:
        return statistics.median(c.get(key, 0) for c in counter_list) / 1000

    by_root = [Counter[str]() for _ in runs]
    by_module_self = [Counter[str]() for _ in runs]
    by_module_cum = [Counter[str]() for _ in runs]
    totals = []
    for i, rows in enumerate(runs):
        for self_us, cum_us, _depth, module in rows:
            by_root[i][module.split(".")[0]] += self_us
            by_module_self[i][module] += self_us
            by_module_cum[i][module] = max(by_module_cum[i][module], cum_us)
        totals.append(sum(r[0] for r in rows) / 1000)
    total = statistics.median(totals)
    lines = [f"imports: {total:.0f} ms of the program's ~{1000 * wall:.0f} ms run (median of {len(runs)} runs of "
             "`python -X importtime -m tests.harness`, Flux on)",
             "  by top-level package (sum of the modules' own import time):"]
    roots = sorted(by_root[0], key=lambda k: -med(by_root, k))
    for root in roots[:top]:
        lines.append(f"    {med(by_root, root):7.1f} ms  {100 * med(by_root, root) / total:4.1f}%  {root}")
    lines.append("  heaviest single modules (own time; cumulative incl. what they import):")
    for module in sorted(by_module_self[0], key=lambda k: -med(by_module_self, k))[:top]:
        lines.append(f"    {med(by_module_self, module):7.1f} ms  (cum {med(by_module_cum, module):7.1f} ms)  {module}")
    return lines


def hyperfine_check(work: Path, py: str, typical: str, minimal: Path, runs: int) -> list[str]:
    """The same two subprocesses under hyperfine, fed the request through a shell redirect."""
    req = work / "request.json"
    req.write_text(typical)
    commands = {
        "program, Flux on (typical)": f"{py} -m tests.harness < {req} > /dev/null",
        "minimal: one RandomPassword": f"{py} -m bench._harness_child {minimal} < {req} > /dev/null",
    }
    export = work / "hyperfine.json"
    subprocess.run(["hyperfine", "--warmup", "2", "--runs", str(runs), "--style", "none", "--export-json",  # noqa: S603, S607
                    str(export), *commands.values()], cwd=ROOT, capture_output=True, text=True, timeout=900,
                   check=True)
    results = json.loads(export.read_text())["results"]
    medians = {name: r["median"] for name, r in zip(commands, results, strict=True)}
    base = medians["minimal: one RandomPassword"]
    lines = [f"hyperfine cross-check ({runs} runs each after 2 warm-ups, commands run in blocks, not interleaved):"]
    for name, value in medians.items():
        lines.append(f"  {name:<32} median {value:.3f} s  ({value / base:.2f}x minimal)")
    lines.append(f"  command: hyperfine --warmup 2 --runs {runs} " + " ".join(f"'{c}'" for c in commands.values()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--importtime-runs", type=int, default=3)
    parser.add_argument("--hyperfine-runs", type=int, default=10,
                        help="cross-check with hyperfine (not interleaved: it runs each command's runs in a block); 0 = skip")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evaluate.txt")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 100))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    typical, dev = request(TYPICAL), request({**TYPICAL, "flux": "false"})
    report = [f"bench/evaluate.py: {machine_line()}", f"python {sys.version.split()[0]} ({py})", ""]

    with scratch("bench-evaluate-") as work:
        minimal, empty, proposal = work / "minimal", work / "empty", work / "proposal"
        minimal.mkdir()
        (minimal / "__main__.py").write_text(MINIMAL_PROGRAM)
        empty.mkdir()
        (empty / "__main__.py").write_text("import pulumi  # noqa: F401\n")
        shutil.copytree(ROOT / "components", proposal / "components", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "__main__.py", proposal / "__main__.py")
        flux_py = proposal / "components" / "flux_secret.py"
        source = flux_py.read_text()
        proposal_ok = TYPED_BLOCK in source
        if proposal_ok:
            flux_py.write_text(source.replace(TYPED_BLOCK, GENERIC_BLOCK).replace(
                "secret.metadata.name", 'secret.metadata["name"]'))
        child = [py, "-m", "bench._harness_child"]
        variants: dict[str, Callable[[], tuple[float, float]]] = {
            "program, Flux on (typical)": lambda: run_child([py, "-m", "tests.harness"], typical),
            "program, Flux off (dev stack)": lambda: run_child([py, "-m", "tests.harness"], dev),
            "minimal: one RandomPassword": lambda: run_child([*child, str(minimal)], typical),
            "empty program (import pulumi)": lambda: run_child([*child, str(empty)], typical, expect_resources=False),
            "python -c pass": lambda: run_child([py, "-c", "pass"], "", expect_resources=False),
        }
        if proposal_ok:
            variants["program copy, Flux on, Secret via CustomResource"] = (
                lambda: run_child([*child, str(proposal)], typical))
        else:
            report.append("proposal variant not measured: components/flux_secret.py no longer has the expected "
                          "k8s.core.v1.Secret block")
        for fn in variants.values():  # warm the page cache and .pyc files
            fn()
        wall = Series("harness subprocess, preview under mocks: wall", baseline="minimal: one RandomPassword")
        cpu = Series("harness subprocess, preview under mocks: CPU (user+sys)", baseline="minimal: one RandomPassword")
        for r in range(rounds):
            w, c = {}, {}
            for name in rotated(list(variants), r):
                w[name], c[name] = variants[name]()
            wall.add_round(w)
            cpu.add_round(c)
            log(f"round {r + 1}/{rounds}: " + " ".join(f"[{list(variants).index(k)}]={v:.2f}" for k, v in w.items()))
        if proposal_ok:
            # An update with the state of a first one, so both sides see the same generated passwords.
            state = json.loads(child_output([py, "-m", "tests.harness"], request(TYPICAL, preview=False))[2])["state"]
            for preview in (True, False):
                req = request(TYPICAL, preview=preview, state=state)
                verdict = same_registrations(child_output([py, "-m", "tests.harness"], req)[2],
                                             child_output([*child, str(proposal)], req)[2])
                report.append(f"proposal vs program, {'preview' if preview else 'update'} registrations: {verdict}")
        # The in-process API the tests use, for reference (spawn + JSON round trip included).
        sys.path.insert(0, str(ROOT))
        from tests.harness import run_program

        api = []
        for _ in range(min(rounds, 5)):
            t = time.perf_counter()
            run_program(TYPICAL, preview=True)
            api.append(time.perf_counter() - t)
        report += [wall.render(), "", cpu.render(), "",
                   f"tests.harness.run_program(typical, preview=True) from a test: median {statistics.median(api):.3f} s"
                   f" over {len(api)} calls", ""]
        if args.hyperfine_runs and shutil.which("hyperfine"):
            report += hyperfine_check(work, py, typical, minimal, max(2, min(args.hyperfine_runs, 50))) + [""]
        runs = [importtime([py, "-m", "tests.harness"], typical) for _ in range(max(1, min(args.importtime_runs, 10)))]
        program_wall = statistics.median(r["program, Flux on (typical)"] for r in wall.rounds)
        report += import_report(runs, program_wall)
        core = [sum(s for s, _, _, m in rows if m.startswith("pulumi_kubernetes.core.v1")) / 1000 for rows in runs]
        report.append(f"  pulumi_kubernetes.core.v1 (all its modules, own time): {statistics.median(core):.0f} ms")

    write_report(report, args.out)


if __name__ == "__main__":
    main()
