"""The real engine on the end-to-end test host: this program against a one-resource program, side by side.

    sudo .venv/bin/python -m bench.apply [--rounds 3] [--stack dev]

Each round starts a NEW disposable host (tests/e2e/testhost.py, container `regtest-bench`, removed at the end)
and, with the real Pulumi CLI (tests/e2e/engine.py: file:// backend, passphrase), runs in a rotated order:
- `pulumi preview` of a new stack of this program, and of a one-resource program (one RandomPassword, the
  same CLI, language host and a provider plugin: the floor any program pays);
then a fresh `pulumi up` of this program (wall time, SSH logins the host accepted, and the longest chain of commands
the engine ran one after another: the sequential SSH round trips), then, again rotated, a no-op `pulumi up` of
this program and of the one-resource program (after its own `up`).
Every figure is a ratio to the one-resource program within the round.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, Series, log, machine_line, scratch, write_report

HOST_NAME = "regtest-bench"
ONE_RESOURCE = """\
import pulumi
import pulumi_random as random

pulumi.export("length", random.RandomPassword("one", length=16).length)
"""


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def chain_by_order(executions: list[Any]) -> tuple[int, list[str]]:
    """Longest chain of executions, each started (in the engine's event order) after the previous one ended."""
    ex = sorted(executions, key=lambda e: e.started)
    best: list[tuple[int, int]] = []
    for i, e in enumerate(ex):
        length, pred = 1, -1
        for j in range(i):
            if ex[j].ended <= e.started and best[j][0] + 1 > length:
                length, pred = best[j][0] + 1, j
        best.append((length, pred))
    if not best:
        return 0, []
    i = max(range(len(best)), key=lambda k: best[k][0])
    names = []
    while i >= 0:
        names.append(ex[i].name)
        i = best[i][1]
    return len(names), names[::-1]


def one_resource_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Pulumi.yaml").write_text(
        f"name: bench-one\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: {ROOT / '.venv'}\n"
    )
    (folder / "__main__.py").write_text(ONE_RESOURCE)
    return folder


def ok(run: Any, what: str) -> Any:
    if not run.ok:
        raise RuntimeError(f"{what} failed:\n{run.error[-3000:]}")
    return run


def timed(call: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = call()
    return result, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "apply.txt")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 10))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = [f"bench/apply.py: {machine_line()}"]
    import yaml

    from tests.e2e import devstack, engine, testhost
    from tests.e2e.clients import Clients

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    previews = Series("pulumi preview of a new stack", baseline="one-resource program")
    noops = Series("no-op pulumi up", baseline="one-resource program")
    fresh_rows: list[dict[str, Any]] = []
    host = None
    with scratch("bench-apply-") as work:
        eng = engine.Engine(work / "pulumi")
        settings = {
            k.split(":", 1)[1]: v
            for k, v in (yaml.safe_load((ROOT / f"Pulumi.{args.stack}.yaml").read_text())["config"]).items()
        }
        try:
            for r in range(rounds):
                host = testhost.start_host(name=HOST_NAME, key_dir=work / "keys")
                clients = Clients(host)
                if settings.get("registryCaFile"):
                    devstack.save_pebble_root(host, str(settings["registryCaFile"]))
                program = engine.Stack(eng, f"bench-{r}", engine.make_project(work / f"program-{r}"),
                                       {**settings, **host.engine_settings()})
                one = engine.Stack(eng, f"one-{r}", one_resource_project(work / f"one-{r}"))
                order = [("this program", program), ("one-resource program", one)]
                if r % 2:
                    order.reverse()
                row: dict[str, float] = {}
                for label, s in order:
                    run, row[label] = timed(s.preview)
                    ok(run, f"preview of {label}")
                previews.add_round(row)

                since = clients.now()
                fresh, fresh_wall = timed(program.up)
                ok(fresh, "fresh up")
                logins = clients.ssh_logins(since)
                depth, chain = chain_by_order(fresh.executions)
                ok(one.up(), "up of the one-resource program")

                row = {}
                for label, s in order:
                    since = clients.now()
                    run, row[label] = timed(s.up)
                    if ok(run, f"no-op up of {label}").changed():
                        raise RuntimeError(f"the no-op up of {label} changed {run.changed()}")
                noop_logins = clients.ssh_logins(since)
                noops.add_round(row)
                fresh_rows.append({"wall": fresh_wall, "logins": logins, "commands": len(fresh.executions),
                                   "depth": depth, "chain": chain, "resources": len(fresh.ops),
                                   "noop_logins": noop_logins})
                log(f"round {r + 1}: fresh up {fresh_wall:.1f} s ({logins} SSH logins, chain {depth}); "
                    f"previews {previews.rounds[-1]}; no-op {row}")
                host.remove()
                host = None
        finally:
            if host is not None:
                host.remove()

    med = statistics.median
    report += [
        f"stack {args.stack} (Pulumi.{args.stack}.yaml + the host's SSH settings); real CLI "
        f"({eng.toolchain.pulumi}), a new host every round", "",
        previews.render(), "", noops.render(), "",
        "fresh pulumi up of this program, per-round medians:",
        f"  wall {med(r['wall'] for r in fresh_rows):.1f} s for {med(r['resources'] for r in fresh_rows):.0f} resources",
        f"  SSH logins on the host: {med(r['logins'] for r in fresh_rows):.0f} for "
        f"{med(r['commands'] for r in fresh_rows):.0f} commands",
        f"  sequential SSH round trips (longest chain in the engine's event order): "
        f"{med(r['depth'] for r in fresh_rows):.0f}: {' -> '.join(fresh_rows[-1]['chain'])}",
        f"  no-op up: SSH logins {max(r['noop_logins'] for r in fresh_rows)} (max over rounds)",
    ]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
