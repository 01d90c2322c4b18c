"""Shared pieces of the benchmarks: process lifetime, ports, a test CA, interleaved rounds and ratio summaries.

Every figure the benchmarks print is a ratio measured side by side in one run: each round runs every variant
once (in a rotated order, so no variant always runs first or last), the ratio to the baseline is taken inside the
round, and the summary is the median of those per-round ratios with their min-max. Absolute times are shown only
as context; on a shared 2-core machine they drift, ratios within a round much less.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
CADDY = VENV_BIN / "caddy"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------------------------


class Processes:
    """Starts long-running servers in their own process groups and always stops exactly those groups.

    Use as a context manager; SIGTERM/SIGHUP are turned into SystemExit so the cleanup also runs when the
    benchmark itself is killed politely.
    """

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Self:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def start(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the benchmark, never from input
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        self._procs.append((name, proc, out))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        for i, (_, p, out) in enumerate(self._procs):
            if p is proc:
                _stop_group(p, timeout)
                out.close()
                del self._procs[i]
                return

    def stop_all(self) -> None:
        while self._procs:
            _, proc, out = self._procs.pop()
            _stop_group(proc, 10.0)
            out.close()


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group we created (its id is the child's pid), then SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children (nginx workers) share the group; make sure none outlives the leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(argv: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None, input_text: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (bounded by `timeout`), output captured."""
    proc = subprocess.run(  # noqa: S603 - argv is built by the benchmark, never from input
        list(argv), capture_output=True, text=True, timeout=timeout, input=input_text,
        env={**os.environ, **(env or {})}, check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def timed(argv: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> float:
    """Wall time of one command, which must succeed."""
    start = time.perf_counter()
    run(argv, timeout=timeout, env=env)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'server'} exited ({proc.returncode}) before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what or 'server'} did not listen on {LOOPBACK}:{port} within {timeout}s")


def cpu_seconds(pids: Sequence[int], children: bool = False) -> float:
    """utime+stime of the given processes (from /proc/<pid>/stat), in seconds; with `children`, also the
    cutime+cstime of the children they have waited for (helpers such as dockerd's unpigz)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a worker that just exited
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        if children:
            total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def run_seconds(pids: Sequence[int]) -> float:
    """CPU time of every thread of the given processes at nanosecond resolution (/proc/<pid>/task/*/schedstat:
    time spent running). Finer than cpu_seconds' clock ticks; threads that already exited are not counted."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def group_pids(pgid: int) -> list[int]:
    """Every live process in the process group `pgid` (a server and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


# --- TLS -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    ca: Path
    cert: Path
    key: Path


def make_ca(directory: Path, dns_names: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",)) -> TestCA:
    """A throwaway CA and one ECDSA P-256 server certificate for loopback names (what ACME would issue)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (directory / n for n in
                                       ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "server.ext"))
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=registry bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(ca_key), "-out", str(ca)])
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", f"/CN={dns_names[0]}", "-keyout", str(key), "-out", str(csr)])
    sans = [f"DNS:{n}" for n in dns_names] + [f"IP:{i}" for i in ips]
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   f"subjectAltName={','.join(sans)}\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert)])
    return TestCA(ca=ca, cert=cert, key=key)


# --- rounds and ratios -----------------------------------------------------------------------------------------


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median (order statistics of the sign test): (low, high,
    the confidence actually reached). With too few values for `confidence` it returns min-max and what min-max
    reaches (e.g. 75% for 3 values)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    # P(Binomial(n, 1/2) <= k - 1): the chance that the median lies below the k-th smallest value.
    tail = [math.comb(n, i) / 2**n for i in range(n + 1)]
    k = 1
    while k < n // 2 and 2 * sum(tail[:k + 1]) <= 1 - confidence:
        k += 1
    reached = 1 - 2 * sum(tail[:k])
    return xs[k - 1], xs[n - k], reached


def ci_text(values: Sequence[float]) -> str:
    lo, hi, reached = median_ci(values)
    return f"CI{reached * 100:.0f} {lo:.2f}-{hi:.2f}"


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """The round's order: a rotation, so each variant takes every position equally often."""
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])


@dataclass
class Series:
    """Per-round measurements of several variants of one operation; ratios are taken within a round."""

    title: str
    baseline: str
    unit: str = "s"
    rounds: list[dict[str, float]] = field(default_factory=list)

    def add_round(self, values: dict[str, float]) -> None:
        self.rounds.append(values)

    def variants(self) -> list[str]:
        seen: list[str] = []
        for r in self.rounds:
            seen += [v for v in r if v not in seen]
        return seen

    def ratios(self, variant: str) -> list[float]:
        return [r[variant] / r[self.baseline] for r in self.rounds if variant in r and r.get(self.baseline)]

    def pair_ratios(self, variant: str, other: str) -> list[float]:
        """Per-round ratios of one variant to another (both measured in the same rounds)."""
        return [r[variant] / r[other] for r in self.rounds if variant in r and r.get(other)]

    def render(self) -> str:
        head = (f"{self.title}  (ratio to {self.baseline}: median of {len(self.rounds)} per-round ratios"
                f" [min-max], confidence interval of that median (sign test); median {self.unit} for context)")
        lines = [head]
        width = max([28, *(len(v) + 1 for v in self.variants())])
        for variant in self.variants():
            values = [r[variant] for r in self.rounds if variant in r]
            ratios = self.ratios(variant)
            ratio = (f"{statistics.median(ratios):6.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]" if ratios
                     else "   n/a")
            ci = ci_text(ratios) if ratios and variant != self.baseline else ""
            lines.append(f"  {variant:<{width}} {ratio:<22} {ci:<17} {statistics.median(values):10.3f} {self.unit}")
        return "\n".join(lines)

    def render_pairs(self, pairs: Sequence[tuple[str, str]]) -> str:
        """Head-to-head lines: variant / other, per round, for pairs present in this series."""
        lines = [f"{self.title}, head to head (median of per-round ratios [min-max], confidence interval)"]
        for a, b in pairs:
            ratios = self.pair_ratios(a, b)
            if ratios:
                lines.append(f"  {a + ' / ' + b:<44} {statistics.median(ratios):6.3f}x [{min(ratios):.2f}-"
                             f"{max(ratios):.2f}]  {ci_text(ratios)}")
        return "\n".join(lines)


def interleave(variants: Sequence[str], rounds: int, measure: Callable[[str, int], dict[str, float]],
               series: dict[str, Series], between: Callable[[int], None] | None = None) -> None:
    """Run `rounds` rounds; in each, every variant once in rotated order. `measure(variant, round)` returns
    {operation: value}; each operation's values of the round go to series[operation]."""
    for r in range(rounds):
        got: dict[str, dict[str, float]] = {}
        for variant in rotated(variants, r):
            for op, value in measure(variant, r).items():
                got.setdefault(op, {})[variant] = value
        for op, values in got.items():
            series[op].add_round(values)
        log(f"round {r + 1}/{rounds}: " + "; ".join(
            f"{op} " + " ".join(f"{v}={values[v]:.3f}" for v in variants if v in values) for op, values in got.items()))
        if between is not None:
            between(r)


def write_report(report: Sequence[str], out: Path) -> None:
    """Print the report and save it where --out points."""
    text = "\n".join(report) + "\n"
    print(text)
    out.write_text(text)
    log(f"written to {out}")


def machine_line() -> str:
    cpus = os.cpu_count()
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?")
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {cpus} cores ({model}), load average {' '.join(load)}"


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False, base: str | None = None) -> Iterator[Path]:
    """A temporary working directory (under `base`, default the system's temp folder), removed unless `keep`."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
