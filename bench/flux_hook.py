"""Push-to-deploy: seconds from the end of a push to the tag in the ImageRepository's status, hook on and off.

    sudo .venv/bin/python -m bench.flux_hook [--pushes 10] [--interval 1m]

Starts a disposable test host (container `regtest-bench-flux`, removed at the end) with its Kubernetes API and
Flux's controllers (testhost.ensure_extras(flux=True)), applies this program with the real Pulumi CLI (Flux on,
fluxInterval as given, the Receiver at the host's notification-controller), then pushes N tags one after another
with skopeo through the site (push credential) and times, for each, the moment the push returned to the moment the
tag is in `status.lastScanResult` (polled every 0.1 s with `k3s kubectl` on the host: add about 0.1 s of
resolution). Then `fluxReceiver: false` (the same stack, one `up`: no Receiver, no relay, no notifications) and the
same N pushes again: the tag arrives at the next interval scan. Nothing asks for a scan by hand in either series.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT, log, machine_line, scratch, write_report

HOST_NAME = "regtest-bench-flux"
IMAGE = "bench/flux-app"
REPOSITORY = "bench-flux-app"
RECEIVER_ADDRESS = "127.0.0.1:9292"


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def ok(run: Any, what: str) -> Any:
    if not run.ok:
        raise RuntimeError(f"{what} failed:\n{run.error[-3000:]}")
    return run


def latest_tags(host: Any) -> list[str]:
    out = host.exec(
        f"k3s kubectl -n flux-system get imagerepositories.image.toolkit.fluxcd.io {REPOSITORY} -o json", check=False
    ).stdout
    if not out:
        return []
    status = json.loads(out).get("status") or {}
    return list((status.get("lastScanResult") or {}).get("latestTags") or [])


def series(host: Any, clients: Any, authfile: str, label: str, pushes: int, timeout: float) -> list[float]:
    """Push `pushes` new tags one after another; seconds from each push's end to its tag in the status."""
    seconds = []
    for i in range(pushes):
        tag = f"{label}-{i}-{int(time.time())}"
        local = clients.make_image(f"bench-{label}-{i}")
        clients.push(local, f"{IMAGE}:{tag}", authfile)
        pushed = time.monotonic()
        while tag not in latest_tags(host):
            if time.monotonic() - pushed > timeout:
                raise RuntimeError(f"{label}: tag {tag} not in the status after {timeout:.0f} s")
            time.sleep(0.1)
        seconds.append(time.monotonic() - pushed)
        log(f"{label} push {i + 1}/{pushes}: {seconds[-1]:.2f} s")
    return seconds


def describe(label: str, seconds: list[float]) -> str:
    return (
        f"  {label:<34} median {statistics.median(seconds):6.2f} s   max {max(seconds):6.2f} s   "
        f"min {min(seconds):6.2f} s   (n={len(seconds)}: {', '.join(f'{s:.1f}' for s in seconds)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--interval", default="1m", help="fluxInterval (the seed's is 1m)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flux_hook.txt")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    from tests.e2e import engine, testhost
    from tests.e2e.clients import Clients, stack_config

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    host = None
    results: dict[str, list[float]] = {}
    with scratch("bench-flux-") as work:
        try:
            host = testhost.start_host(name=HOST_NAME, key_dir=work / "keys")
            testhost.ensure_extras(host, flux=True)
            clients = Clients(host)
            clients.trust_pebble()
            eng = engine.Engine(work / "pulumi")
            config = stack_config(
                host, flux="true", kubeconfig=host.kubeconfig(), fluxImages=[IMAGE], fluxInterval=args.interval,
                fluxCaCert=host.pebble_root(), fluxReceiverAddress=RECEIVER_ADDRESS,
            )  # fmt: skip
            stack = engine.Stack(eng, "bench-flux", engine.make_project(work / "project"), config)
            ok(stack.up(), "up with the hook")
            outputs = stack.outputs()
            authfile = clients.authfile("bench-flux-push", outputs["dockerConfigJson"])
            clients.push(clients.make_image("bench-seed"), f"{IMAGE}:seed", authfile)
            time.sleep(5)  # the seed's own notification and scan settle before the first timed push
            results["hook on (Receiver)"] = series(host, clients, authfile, "hook", args.pushes, timeout=120)
            stack.configure({"fluxReceiver": "false"})
            ok(stack.up(), "up without the hook")
            time.sleep(5)
            results[f"hook off (interval {args.interval})"] = series(
                host, clients, authfile, "poll", args.pushes, timeout=300
            )
            ok(stack.destroy(), "destroy")
        finally:
            if host is not None:
                host.remove()

    report = [
        f"bench/flux_hook.py: {machine_line()}",
        f"seconds from the end of a push (skopeo, through the site) to the tag in the ImageRepository's "
        f"status.lastScanResult; {args.pushes} pushes one after another per series; fluxInterval {args.interval}",
        "",
        *(describe(label, seconds) for label, seconds in results.items()),
    ]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
