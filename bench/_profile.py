"""Caddy's own CPU profile (pprof through its admin endpoint, perf where it works) during pushes and pulls."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench import _pprof
from bench._clients import Skopeo
from bench._common import (
    Processes,
    run,
)
from bench._fronts import (
    CaddyFront,
)
from bench._images import make_layout
from bench._setups import Endpoint

# --- profile ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def caddy_profile(front: CaddyFront, seconds: int, sink: dict[str, bytes]) -> Iterator[threading.Thread]:
    url = f"http://127.0.0.1:{front.admin_port}/debug/pprof/profile?seconds={seconds}"

    def grab() -> None:
        with urllib.request.urlopen(url, timeout=seconds + 60) as resp:  # noqa: S310 - loopback admin endpoint
            sink["profile"] = resp.read()

    thread = threading.Thread(target=grab, daemon=True)
    thread.start()
    time.sleep(0.3)
    try:
        yield thread
    finally:
        thread.join(seconds + 60)


def perf_report(data: Path, top: int = 20) -> str:
    """Kernel-and-user split of a `perf record` file (Caddy is stripped, so its own frames show as addresses)."""
    rep = run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none",
               "--percent-limit", "0.7"], check=False, timeout=120)
    rows = [ln for ln in rep.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join("    " + ln.strip() for ln in rows[:top])


def perf_usable() -> bool:
    return run(["perf", "stat", "-e", "cpu-clock", "true"], check=False, timeout=30).returncode == 0


def profile_caddy(ep: Endpoint, client: Skopeo, layouts: Path, size: int, seconds: int, results: Path,
                  procs: Processes, use_perf: bool) -> str:
    """Push (then pull) fresh images through the generated site for `seconds`, with Caddy's CPU profiler on
    (and, if `use_perf`, `perf record` on the Caddy process for the kernel side of its syscalls)."""
    if ep.caddy is None:
        raise ValueError("profiling needs a Caddy endpoint")
    out = []
    refs: list[str] = []
    for op in ("push", "pull"):
        pending = []
        if op == "push":  # the layouts are made before the profile starts
            for i in range(12):
                lay = layouts / f"prof-{i}"
                make_layout(lay, size, "bench")
                pending.append(lay)
        sink: dict[str, bytes] = {}
        done = 0
        perf_data = results / f"caddy-{op}.perf.data"
        perf = (procs.start("perf", ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p",
                                     str(ep.caddy.proc.pid), "-o", str(perf_data)], results / "perf.log")
                if use_perf else None)
        with caddy_profile(ep.caddy, seconds, sink) as thread:
            while thread.is_alive() and done < 12:
                if op == "push":
                    ref = f"bench/profile:p{done}"
                    client.push(ep, pending[done], ref, {})
                    refs.append(ref)
                else:
                    client.pull(ep, refs[done % len(refs)], {})
                done += 1
        if perf is not None:
            procs.stop(perf)
        for lay in pending:
            run(["rm", "-rf", str(lay)])
        if "profile" not in sink:
            raise RuntimeError("no profile came back from Caddy's admin endpoint")
        (results / f"caddy-{op}.pprof").write_bytes(sink["profile"])
        out.append(_pprof.report(_pprof.parse(sink["profile"]), top=20,
                                 title=f"Caddy CPU profile (pprof), {done} x {size >> 20} MiB {op} (skopeo) through "
                                       "the generated site"))
        if perf is not None and perf_data.exists():
            out.append(f"perf record -e cpu-clock -g -p <caddy> during the same {op}s, by dso and symbol "
                       "(self time; [k] = kernel):\n" + perf_report(perf_data))
    return "\n\n".join(out)
