"""Apply on the end-to-end test host: a fresh apply, its sequential SSH round trips, and a no-op re-apply.

    sudo .venv/bin/python -m bench.apply [--rounds 3] [--stack dev]

Each round starts a NEW disposable host (tests/e2e/testhost.py, container `regtest-bench`, removed at the end),
then, in this order: a fresh apply of the stack (tests/e2e/apply.py: the program under mocks, then every command
replayed over real SSH as pulumi-command would run it), a no-op re-apply with the state it left, and the program
evaluation alone (tests.harness.run_program with that state) as the baseline the no-op cannot go below.

From the fresh apply's timeline it derives:
- SSH connections (pulumi-command dials one per command) and the longest chain of commands that ran one after
  another (each started after the previous ended): the sequential SSH round trips;
- the same chain length and the critical-path time implied by the declared dependencies alone, so a chain
  longer than the graph's, or a command that started well after its last dependency finished, shows steps
  waiting for something they do not depend on.
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
SLACK = 0.25
"""A command that starts more than this many seconds after its last dependency finished is reported as waiting."""


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def chain_by_time(executions: list[Any]) -> tuple[int, list[str]]:
    """Longest chain of executions, each started after the previous one ended (observed sequential depth)."""
    ex = sorted(executions, key=lambda e: e.started)
    best: list[tuple[int, int]] = []  # (length, predecessor index)
    for i, e in enumerate(ex):
        length, pred = 1, -1
        for j in range(i):
            if ex[j].ended <= e.started + 1e-3 and best[j][0] + 1 > length:
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


def graph_paths(steps: list[Any], executions: list[Any]) -> tuple[int, float, list[str]]:
    """From the declared dependencies: the most commands on one path, and the critical path time using each
    command's measured duration (resources that run nothing count zero)."""
    seconds: dict[str, float] = {}
    for e in executions:
        seconds[e.urn] = seconds.get(e.urn, 0.0) + e.seconds
    by_urn = {s.urn: s for s in steps if s.op != "delete"}
    memo: dict[str, tuple[int, float, list[str]]] = {}

    def walk(urn: str, seen: tuple[str, ...] = ()) -> tuple[int, float, list[str]]:
        if urn in memo:
            return memo[urn]
        step = by_urn.get(urn)
        if step is None or urn in seen:
            return 0, 0.0, []
        best: tuple[int, float, list[str]] = (0, 0.0, [])
        for dep in step.dependencies:
            got = walk(dep, (*seen, urn))
            if (got[1], got[0]) > (best[1], best[0]):
                best = got
        ran = urn in seconds
        memo[urn] = (best[0] + int(ran), best[1] + seconds.get(urn, 0.0), best[2] + ([step.name] if ran else []))
        return memo[urn]

    results = [walk(u) for u in by_urn]
    count = max((r[0] for r in results), default=0)
    longest = max(results, key=lambda r: (r[1], r[0]), default=(0, 0.0, []))
    return count, longest[1], longest[2]


def waits(steps: list[Any], executions: list[Any], t0: float) -> list[str]:
    """Commands that started well after all their dependencies had finished."""
    ended: dict[str, float] = {}
    for e in executions:
        ended[e.urn] = max(ended.get(e.urn, 0.0), e.ended)
    first_start: dict[str, float] = {}
    for e in executions:
        first_start[e.urn] = min(first_start.get(e.urn, e.started), e.started)
    by_urn = {s.urn: s for s in steps}
    out = []
    for urn, start in first_start.items():
        deps = [ended[d] for d in by_urn[urn].dependencies if d in ended] if urn in by_urn else []
        ready = max(deps, default=t0)
        if start - ready > SLACK:
            out.append(f"{by_urn[urn].name} started {start - ready:.2f} s after its dependencies were done")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "apply.txt")
    parser.add_argument("--keep-host", action="store_true", help="leave the last host running (for inspection)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 10))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = [f"bench/apply.py: {machine_line()}"]
    try:
        from tests.e2e import apply as e2e_apply
        from tests.e2e import testhost
        from tests.harness import run_program
    except ImportError as exc:  # the e2e helpers are not in this checkout
        text = "\n".join([*report, f"apply NOT MEASURED: the end-to-end helpers are missing ({exc})"]) + "\n"
        print(text)
        args.out.write_text(text)
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)

    series = Series("apply on the disposable test host", baseline="no-op re-apply")
    ssh_rows: list[dict[str, Any]] = []
    host = None
    with scratch("bench-apply-") as work:
        try:
            for r in range(rounds):
                t = time.perf_counter()
                host = testhost.start_host(name=HOST_NAME, key_dir=work / "keys")
                log(f"round {r + 1}: fresh host up in {time.perf_counter() - t:.1f} s")
                config = e2e_apply.read_stack_config(ROOT / f"Pulumi.{args.stack}.yaml")
                config.update(e2e_apply.host_config(host))
                if config.get("registryCaFile"):
                    e2e_apply.save_pebble_root(host, str(config["registryCaFile"]))
                state_dir = e2e_apply.StateDir(work / f"state-{r}")
                console: list[str] = []

                t0 = time.perf_counter()
                fresh = e2e_apply.up(config, state_dir, stack=args.stack, console=console.append)
                fresh_wall = time.perf_counter() - t0
                if fresh.result is None or not fresh.result.ok:
                    raise RuntimeError("fresh apply failed:\n" + "\n".join(console[-40:]))
                t0 = time.perf_counter()
                noop = e2e_apply.up(config, state_dir, stack=args.stack, console=console.append)
                noop_wall = time.perf_counter() - t0
                if noop.result is None or not noop.result.ok:
                    raise RuntimeError("no-op re-apply failed:\n" + "\n".join(console[-40:]))
                t0 = time.perf_counter()
                run_program(config, state_dir.program_state(), preview=False, stack=args.stack)
                eval_wall = time.perf_counter() - t0
                series.add_round({"fresh apply": fresh_wall, "no-op re-apply": noop_wall,
                                  "program evaluation alone": eval_wall})

                res = fresh.result
                observed, chain = chain_by_time(res.executions)
                declared, critical, path = graph_paths(res.steps, res.executions)
                busy = sum(e.seconds for e in res.executions)
                ssh_rows.append({
                    "connections": res.stats.connections, "commands": len(res.executions),
                    "observed": observed, "chain": chain, "declared": declared, "critical": critical,
                    "path": path, "replay": res.seconds, "busy": busy,
                    "waits": waits(res.steps, res.executions, res.started),
                    "timeline": [(e.name, e.started - res.started, e.seconds) for e in
                                 sorted(res.executions, key=lambda e: e.started)],
                    "noop_connections": noop.result.stats.connections,
                    "noop_changes": len(noop.result.changed()),
                })
                log(f"round {r + 1}: fresh {fresh_wall:.1f} s ({res.stats.connections} SSH connections, chain "
                    f"{observed}), no-op {noop_wall:.2f} s, evaluation {eval_wall:.2f} s")
                if r < rounds - 1 or not args.keep_host:
                    host.remove()
                    host = None
        finally:
            if host is not None and not args.keep_host:
                host.remove()

    report += [f"stack {args.stack} (Pulumi.{args.stack}.yaml + the host's SSH settings); a new host every round", "",
               series.render(), ""]
    med = statistics.median
    report += [
        "fresh apply, per round medians:",
        f"  SSH connections (one per command, as pulumi-command dials): {med(r['connections'] for r in ssh_rows):.0f}"
        f" for {med(r['commands'] for r in ssh_rows):.0f} commands",
        f"  sequential SSH round trips, observed (longest chain of commands run one after another): "
        f"{med(r['observed'] for r in ssh_rows):.0f}",
        f"  the same implied by the declared dependencies: {med(r['declared'] for r in ssh_rows):.0f}",
        f"  replay wall {med(r['replay'] for r in ssh_rows):.1f} s; critical path by the dependencies "
        f"{med(r['critical'] for r in ssh_rows):.1f} s; sum of all command times {med(r['busy'] for r in ssh_rows):.1f}"
        " s (sum > wall: independent commands overlapped)",
        f"  observed chain (last round): {' -> '.join(ssh_rows[-1]['chain'])}",
        f"  critical path (last round): {' -> '.join(ssh_rows[-1]['path'])}",
        "  commands that waited for something they do not depend on (> "
        f"{SLACK} s): " + ("; ".join(w for r in ssh_rows for w in r["waits"]) or "none"),
        "  timeline of the last round's fresh apply (start offset in the replay, duration):",
        *(f"    +{start:5.2f} s  {secs:5.2f} s  {name}" for name, start, secs in ssh_rows[-1]["timeline"]),
        f"no-op re-apply: {med(r['noop_changes'] for r in ssh_rows):.0f} changes, "
        f"{med(r['noop_connections'] for r in ssh_rows):.0f} SSH connections",
    ]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
