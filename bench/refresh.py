"""What reading the host back costs: the drift gate of this program, of its previous version and of a one-resource
program, side by side on the real engine.

    .venv/bin/python -m bench.refresh [--rounds 5] [--stack dev]

One disposable test host (tests/e2e/testhost.py, container `regtest-bench-refresh`, removed at the end). The
previous version of the program (before the observers: tests/e2e/engine.py previous_version) runs `pulumi up` on it,
then this version does (taking the same host over): both stacks then describe the host, and neither refresh changes
it. Each round runs, in a rotated order, the drift gate `pulumi refresh --preview-only --expect-no-changes` of:
this program (four observers: one SSH session each), the previous version (no resource has a read: no SSH), and a
one-resource program (one RandomPassword: the floor any refresh pays). Figures are ratios within a round.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, Series, log, machine_line, scratch, write_report
from bench.apply import ok, one_resource_project

HOST_NAME = "regtest-bench-refresh"
GATE = ["refresh", "--preview-only", "--expect-no-changes"]


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refresh.txt")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 20))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    from tests.e2e import devstack, engine, testhost
    from tests.e2e.clients import Clients

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    gates = Series("drift gate (pulumi refresh --preview-only --expect-no-changes)", baseline="one-resource program")
    logins: dict[str, list[int]] = {}
    host = None
    with scratch("bench-refresh-") as work:
        eng = engine.Engine(work / "pulumi")
        settings = {
            k.split(":", 1)[1]: v
            for k, v in (yaml.safe_load((ROOT / f"Pulumi.{args.stack}.yaml").read_text())["config"]).items()
        }
        try:
            host = testhost.start_host(name=HOST_NAME, key_dir=work / "keys")
            clients = Clients(host)
            if settings.get("registryCaFile"):
                devstack.save_pebble_root(host, str(settings["registryCaFile"]))
            config = {**settings, **host.engine_settings()}
            old_source = engine.previous_version(work / "previous-version")
            previous = engine.Stack(eng, "previous", engine.make_project(work / "previous", source=old_source), config)
            ok(previous.up(), "up of the previous version")
            program = engine.Stack(eng, "program", engine.make_project(work / "program"), config)
            ok(program.up(), "up of this program")
            one = engine.Stack(eng, "one", one_resource_project(work / "one"))
            ok(one.up(), "up of the one-resource program")
            stacks = {"this program": program, "previous version (no reads)": previous, "one-resource program": one}
            for r in range(rounds):
                order = list(stacks)
                order = order[r % len(order):] + order[:r % len(order)]
                row: dict[str, float] = {}
                for label in order:
                    s = stacks[label]
                    since = clients.now()
                    t0 = time.perf_counter()
                    proc = eng.cli([*GATE, "--stack", s.name], cwd=s.project_dir, check=False)
                    row[label] = time.perf_counter() - t0
                    if proc.returncode != 0:
                        raise RuntimeError(f"the drift gate of {label} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
                    logins.setdefault(label, []).append(clients.ssh_logins(since))
                gates.add_round(row)
                log(f"round {r + 1}/{rounds}: " + " ".join(f"{k}={v:.2f}s" for k, v in row.items()))
            ok(program.destroy(), "destroy")
            previous.remove()  # its resources were this program's, now destroyed
        finally:
            if host is not None:
                host.remove()

    med = statistics.median
    report: list[Any] = [
        f"bench/refresh.py: {machine_line()}",
        f"stack {args.stack} (Pulumi.{args.stack}.yaml + the host's SSH settings); real CLI ({eng.toolchain.pulumi}); "
        "one host, rotated order",
        "",
        gates.render(),
        "",
        gates.render_pairs([("this program", "previous version (no reads)")]),
        "",
        "SSH logins on the host per drift gate (median over rounds): "
        + ", ".join(f"{k} {med(v):.0f}" for k, v in logins.items()),
    ]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
