"""Auth cost of the generated Caddy site: basic_auth with the program's bcrypt cost (10).

    .venv/bin/python -m bench.auth [--rounds 9] [--requests 30] [--burst 40] [--flood 160]

1. Steady state: GET /v2/ over one keep-alive TLS connection, with valid credentials (Caddy's hash cache hit),
   with none (Caddy's own 401) and through the same site with basic_auth removed (the unauthenticated baseline),
   interleaved request by request; the registry straight over HTTP for context.
2. First request: a fresh Caddy per round, first authenticated request (cache miss = one bcrypt) vs the first
   request to a fresh copy without basic_auth; then the second request.
3. Wrong passwords: Caddy's CPU time (from /proc/<pid>/task/*/schedstat, in ns) per attempt for a burst of
   distinct wrong passwords, the same wrong password repeated, unknown user names (Caddy checks those against a
   built-in bcrypt hash of cost 14), and requests without credentials; from outside the allowlist; and through
   the same site without its unknown-user guard (as it was before the guard was added).
4. Flood: several clients sending distinct wrong passwords at once while a legitimate client keeps pulling
   the /v2/ endpoint: the attack's CPU rate and the legitimate request latency under it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import secrets
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt

from bench._common import (
    ROOT,
    Processes,
    Series,
    TestCA,
    log,
    machine_line,
    make_ca,
    rotated,
    run_seconds,
    scratch,
    write_report,
)
from bench._fronts import (
    BCRYPT_COST,
    PULL_USER,
    PUSH_USER,
    CaddyFront,
    Credentials,
    allowlist_first,
    auth_before_allowlist,
    drop_auth,
    start_caddy,
    start_registry,
    without_unknown_user_guard,
)

OUTSIDE_ALLOWLIST = ("192.0.2.0/24",)
"""An allowlist (TEST-NET-1) that the benchmark's own 127.0.0.1 is outside of."""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Client:
    """One keep-alive HTTP(S) connection; request() returns (status, seconds) with the body fully read."""

    def __init__(self, port: int, ca: TestCA | None) -> None:
        if ca is None:
            self.conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        else:
            ctx = ssl.create_default_context(cafile=str(ca.ca))
            self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
        self.conn.connect()

    def request(self, headers: dict[str, str] | None = None, path: str = "/v2/") -> tuple[int, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers=headers or {})
        resp = self.conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


def caddy_cpu(front: CaddyFront) -> float:
    """CPU seconds of every thread of the Caddy process, at nanosecond resolution (schedstat run time)."""
    return run_seconds([front.proc.pid])


def expect(status: int, wanted: int, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what}: expected HTTP {wanted}, got {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=30, help="requests of each kind per round (steady state)")
    parser.add_argument("--burst", type=int, default=40, help="wrong-password attempts per kind per round")
    parser.add_argument("--flood", type=int, default=160, help="attempts in the concurrent flood")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "auth.txt")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 50))
    n_req = max(1, min(args.requests, 500))
    burst = max(1, min(args.burst, 400))
    flood = max(4, min(args.flood, 2000))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = [f"bench/auth.py: {machine_line()}", ""]

    # bcrypt itself, in this process, for scale (CPU time, so other load on the machine does not count).
    sample_hash = bcrypt.hashpw(b"x" * 32, bcrypt.gensalt(BCRYPT_COST))
    checks = []
    for _ in range(5):
        t = time.process_time()
        bcrypt.checkpw(b"y" * 32, sample_hash)
        checks.append(time.process_time() - t)
    report.append(f"one bcrypt check at cost {BCRYPT_COST} in Python's bcrypt (C): {1000 * statistics.median(checks):.1f} ms"
                  " CPU (each cost step doubles it)")

    with Processes() as procs, scratch("bench-auth-", args.keep) as work:
        ca = make_ca(work / "tls")
        creds = Credentials.generate()
        registry, port = start_registry(procs, work)
        upstream = f"127.0.0.1:{port}"
        site = start_caddy(procs, work, "caddy", upstream, creds, ca)
        open_site = start_caddy(procs, work, "caddy-noauth", upstream, creds, ca, drop_auth)
        push_ok = basic(PUSH_USER, creds.push_password)
        pull_ok = basic(PULL_USER, creds.pull_password)

        # 1. steady state ------------------------------------------------------------------------------------
        c_site, c_open, c_direct = Client(site.port, ca), Client(open_site.port, ca), Client(port, None)
        kinds: dict[str, tuple[Client, dict[str, str] | None, int]] = {
            "site without basic_auth (200)": (c_open, None, 200),
            "generated site, no credentials (401)": (c_site, None, 401),
            "generated site, push user, cached (200)": (c_site, push_ok, 200),
            "generated site, pull user, cached (200)": (c_site, pull_ok, 200),
            "registry direct, plain HTTP (200)": (c_direct, None, 200),
        }
        for client, headers, status in kinds.values():  # warm: connections open, credentials in the cache
            expect(client.request(headers)[0], status, "warm-up")
        steady = Series("GET /v2/ latency, keep-alive connection", baseline="site without basic_auth (200)",
                        unit="ms")
        for r in range(rounds):
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for i in range(n_req):
                for kind in rotated(list(kinds), r + i):
                    client, headers, status = kinds[kind]
                    got, secs = client.request(headers)
                    expect(got, status, kind)
                    times[kind].append(1000 * secs)
            steady.add_round({k: statistics.median(v) for k, v in times.items()})
        for c in (c_site, c_open, c_direct):
            c.close()
        log("steady state done")
        report += ["", steady.render()]

        # 2. first request after a (re)start -----------------------------------------------------------------
        first = Series("first request to a fresh Caddy (connection already open)",
                       baseline="without basic_auth: 1st request", unit="ms")
        for r in range(rounds):
            values = {}
            for variant in rotated(["auth", "open"], r):
                front = start_caddy(procs, work, f"fresh-{variant}-{r}", upstream, creds, ca,
                                    (lambda s: s) if variant == "auth" else drop_auth, validate=False)
                client = Client(front.port, ca)
                headers = push_ok if variant == "auth" else None
                s1, t1 = client.request(headers)
                s2, t2 = client.request(headers)
                expect(s1, 200, variant)
                expect(s2, 200, variant)
                client.close()
                procs.stop(front.proc)
                if variant == "auth":
                    values["generated site: 1st request (cache miss, one bcrypt)"] = 1000 * t1
                    values["generated site: 2nd request (cached)"] = 1000 * t2
                else:
                    values["without basic_auth: 1st request"] = 1000 * t1
                    values["without basic_auth: 2nd request"] = 1000 * t2
            first.add_round(values)
        log("first requests done")
        report += ["", first.render()]

        # 3. wrong-password bursts: Caddy CPU per attempt ----------------------------------------------------
        outside = start_caddy(procs, work, "caddy-allowlist", upstream, creds, ca, allowlist=OUTSIDE_ALLOWLIST)
        auth_first = auth_before_allowlist(outside.caddyfile)
        report += ["", "allowlist order in the generated site: " + (
            "basic_auth runs BEFORE the allowlist's 403 (outsiders cost a bcrypt; a right password answers 403)"
            if auth_first else "the allowlist's 403 comes before basic_auth (outsiders cost no bcrypt)")]

        def wrong() -> dict[str, str]:
            return basic(PUSH_USER, secrets.token_hex(16))

        unguarded = start_caddy(procs, work, "caddy-noguard", upstream, creds, ca, without_unknown_user_guard)
        probe = Client(unguarded.port, ca)
        for headers, status in ((push_ok, 200), (pull_ok, 200), (None, 401), (basic(PUSH_USER, "wrong"), 401),
                                (basic("nobody", "wrong"), 401)):
            expect(probe.request(headers)[0], status, "the site without the unknown-user guard")
        probe.close()
        same_wrong = basic(PUSH_USER, "not-the-password-" + secrets.token_hex(4))
        # name -> (front, header factory, expected status, attempts multiplier for cheap kinds)
        bursts: dict[str, tuple[CaddyFront, Callable[[], dict[str, str] | None], int, int]] = {
            "no credentials (401)": (site, lambda: None, 401, 10),
            "valid password, cached (200)": (site, lambda: push_ok, 200, 10),
            "same wrong password repeated (401)": (site, lambda: same_wrong, 401, 10),
            "distinct wrong passwords (401)": (site, wrong, 401, 1),
            "unknown user names (401)": (site, lambda: basic("u" + secrets.token_hex(6), secrets.token_hex(16)), 401, 10),
            "unknown user names, without the guard (401)": (
                unguarded, lambda: basic("u" + secrets.token_hex(6), secrets.token_hex(16)), 401, 1),
            "distinct wrong passwords, without the guard (401)": (unguarded, wrong, 401, 1),
            "valid password, cached, without the guard (200)": (unguarded, lambda: push_ok, 200, 10),
            "outside allowlist, wrong password": (outside, wrong, 401 if auth_first else 403, 1),
        }
        if auth_first:
            fixed = start_caddy(procs, work, "caddy-allowlist-fixed", upstream, creds, ca, allowlist_first,
                                allowlist=OUTSIDE_ALLOWLIST)
            bursts["outside allowlist, allowlist moved first (fix)"] = (fixed, wrong, 403, 1)
        clients = {name: Client(front.port, ca) for name, (front, _, _, _) in bursts.items()}
        for name, (_, make, status, _) in bursts.items():  # the cheap kinds' entries enter the hash cache here
            got = clients[name].request(make())[0]
            if got != status:
                raise RuntimeError(f"{name}: expected {status}, got {got}")
        cpu_series = Series("Caddy CPU per request", baseline="no credentials (401)", unit="ms CPU")
        wall_series = Series("wall time per request, sequential", baseline="no credentials (401)", unit="ms")
        for r in range(rounds):
            cpu_values, wall_values = {}, {}
            for name in rotated(list(bursts), r):
                front, make, status, mult = bursts[name]
                n = burst * mult
                c0 = caddy_cpu(front)
                t0 = time.perf_counter()
                for _ in range(n):
                    got, _secs = clients[name].request(make())
                    expect(got, status, name)
                wall_values[name] = 1000 * (time.perf_counter() - t0) / n
                cpu_values[name] = 1000 * (caddy_cpu(front) - c0) / n
            cpu_series.add_round(cpu_values)
            wall_series.add_round(wall_values)
        for c in clients.values():
            c.close()
        log("bursts done")
        report += ["", cpu_series.render(), "", wall_series.render()]

        # 4. a concurrent flood against one legitimate client -------------------------------------------------
        legit = Client(site.port, ca)
        expect(legit.request(push_ok)[0], 200, "legit")
        quiet = [1000 * legit.request(push_ok)[1] for _ in range(40)]
        workers = 4
        stop = threading.Event()
        errors: list[str] = []

        def attacker(count: int) -> None:
            try:
                c = Client(site.port, ca)
                for _ in range(count):
                    if stop.is_set():
                        break
                    c.request(wrong())
                c.close()
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=attacker, args=(flood // workers,), daemon=True) for _ in range(workers)]
        c0 = caddy_cpu(site)
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        busy = []
        deadline = time.monotonic() + 120
        while any(th.is_alive() for th in threads) and time.monotonic() < deadline:
            busy.append(1000 * legit.request(push_ok)[1])
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(30)
        wall = time.perf_counter() - t0
        cpu = caddy_cpu(site) - c0
        legit.close()
        if errors:
            raise RuntimeError(f"flood clients failed: {errors[:3]}")
        report += [
            "",
            f"flood: {workers} clients x {flood // workers} distinct wrong passwords = {flood} attempts in {wall:.1f} s"
            f" ({flood / wall:.0f} attempts/s), Caddy CPU {cpu:.1f} s = {cpu / wall:.2f} cores busy"
            f" ({1000 * cpu / flood:.0f} ms CPU per attempt)",
            f"  legitimate cached GET /v2/ meanwhile: median {statistics.median(busy):.1f} ms, max {max(busy):.1f} ms"
            f" over {len(busy)} requests (quiet: median {statistics.median(quiet):.1f} ms, max {max(quiet):.1f} ms)",
        ]

    write_report(report, args.out)


if __name__ == "__main__":
    main()
