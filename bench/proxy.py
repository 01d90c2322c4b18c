"""Proxy overhead: push and pull of fresh random images straight to the registry and through the program's generated
Caddy site (and Distribution's documented nginx front), side by side in one run; the registry either as a process
on loopback or as the registry:2 stand-in container in one of three network set-ups (docker-proxy, host network,
Unix socket); one or several clients at once.

    .venv/bin/python -m bench.proxy [--rounds 9] [--size-mib 64] [--parallel 1] [--clients skopeo,docker]
        [--variants direct,caddy,caddy-host,caddy-unix+flush,...] [--profile 10] [--out bench/results/proxy.txt]

A variant is `direct`, `direct-REG`, `caddy[-REG][+OPTION...]` or an nginx front (REG: a registry set-up from
REGISTRIES; OPTION: a site or transport change from CADDY_OPTIONS); `--help` lists them. Run as root: the Docker
CLI client needs /etc/docker/certs.d/<host:port>/ca.crt (added and removed here).

Every round pushes a NEW random layer per variant, client and parallel slot (nothing is ever reused from the
registry), then pulls that image back; the variants run in a rotated order and each ratio is taken within its
round. After each round the round's repositories and blobs are deleted from every registry's storage (untimed).
Besides wall time it records the CPU seconds each party spent (client, front, registry, docker-proxy) per operation,
and with --profile it captures Caddy's own CPU profile (admin endpoint /debug/pprof/profile) during pushes and pulls
through the generated site and prints the top consumers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._clients import DockerCli, Skopeo, docker_answers, docker_problem, group_cpu, measured
from bench._common import (
    ROOT,
    Processes,
    Series,
    log,
    machine_line,
    make_ca,
    rotated,
    run_seconds,
    scratch,
    write_report,
)
from bench._fronts import (
    Credentials,
    start_caddy,
    start_nginx,
    start_registry,
)
from bench._images import Layout, make_layout, purge
from bench._profile import perf_usable, profile_caddy
from bench._setups import (
    CADDY_OPTIONS,
    DEFAULT_VARIANTS,
    NGINX_VARIANTS,
    REGISTRIES,
    Endpoint,
    RegistryContainer,
    Variant,
    caddy_transform,
    newest_image,
    parse_variant,
)

# --- main ------------------------------------------------------------------------------------------------------


def default_pairs(variants: Sequence[Variant]) -> list[tuple[str, str]]:
    """Head-to-head comparisons worth printing: each option against the same front without it, each registry
    set-up against today's (docker-proxy), the Unix socket against host networking, a registry setting against
    the plain host-network registry."""
    names = {v.name for v in variants}
    pairs: list[tuple[str, str]] = []
    for v in variants:
        if v.front != "caddy":
            continue
        base = "caddy" + (f"-{v.registry}" if v.registry else "")
        if v.options and base in names:
            pairs.append((v.name, base))
        if "h2" in v.options and (h1 := v.name.replace("+h2", "+h1")) in names:
            pairs.append((v.name, h1))
        if not v.options and v.registry not in ("", "docker") and "caddy-docker" in names:
            pairs.append((v.name, "caddy-docker"))
        if not v.options and v.registry == "unix" and "caddy-host" in names:
            pairs.append((v.name, "caddy-host"))
        if not v.options and v.registry.startswith("host") and v.registry != "host" and "caddy-host" in names:
            pairs.append((v.name, "caddy-host"))
    for a, b in (("direct-host", "direct"), ("direct-docker", "direct-host")):
        if a in names and b in names:
            pairs.append((a, b))
    return list(dict.fromkeys(pairs))


def main() -> None:  # noqa: C901, PLR0912, PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="N clients at once per variant, each pushing (then pulling) its own fresh image")
    parser.add_argument("--clients", default="skopeo")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"direct[-REG], caddy[-REG][+OPTION...] or {', '.join(NGINX_VARIANTS)}; "
                             f"REG: {', '.join(REGISTRIES)}; OPTION: {', '.join(CADDY_OPTIONS)}")
    parser.add_argument("--pairs", default="", help="extra head-to-head ratios, e.g. caddy-unix/caddy-host,...")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="also capture Caddy CPU profiles of pushes and pulls for this many seconds each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy.txt")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders (logs, configs)")
    parser.add_argument("--registry-image", help="image for the containerised registries "
                        "(default: the newest regtest-registry:* built by tests/e2e/testhost.py)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 50))
    parallel = max(1, min(args.parallel, 8))
    size = args.size_mib << 20
    just_in_time = size * parallel >= 256 << 20
    try:
        variants = [parse_variant(v.strip()) for v in dict.fromkeys(args.variants.split(",")) if v.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    names = [v.name for v in variants]
    if "direct" not in names:
        parser.error("`direct` (the baseline) is required")
    pairs = default_pairs(variants) + [tuple(p.split("/", 1)) for p in args.pairs.split(",") if "/" in p]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    skipped: list[str] = []
    if "docker" in clients and (problem := docker_problem()):
        skipped.append(f"docker CLI variant skipped: {problem}")
        clients.remove("docker")
    results = args.out.parent
    results.mkdir(parents=True, exist_ok=True)
    wanted_registries = list(dict.fromkeys(v.registry for v in variants if v.registry))
    image = None
    if wanted_registries:
        image = args.registry_image or (newest_image("regtest-registry") if docker_answers(30) else None)
        if image is None:
            skipped.append("containerised-registry variants skipped: no registry image (build the e2e images with "
                           "`python -m tests.e2e.testhost build`, or pass --registry-image) or Docker not answering")
            variants = [v for v in variants if not v.registry]
            wanted_registries = []
    names = [v.name for v in variants]

    # The random layouts and pulled copies live on tmpfs so their disk writeback does not disturb the timings.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 - a private mkdtemp folder inside
    exposure: list[str] = []
    with Processes() as procs, scratch("bench-proxy-", args.keep) as work, \
            scratch("bench-proxy-", args.keep, base=shm) as layouts, contextlib.ExitStack() as stack:
        ca = make_ca(work / "tls")
        creds = Credentials.generate()
        registry, port = start_registry(procs, work)
        debian_root = work / "registry-data"
        upstream = f"127.0.0.1:{port}"
        containers: dict[str, RegistryContainer] = {}
        for key in wanted_registries:
            containers[key] = stack.enter_context(RegistryContainer(key, REGISTRIES[key], image or "", work, ca))
            exposure.append(containers[key].exposure())
        endpoints: dict[str, Endpoint] = {}
        for v in variants:
            if v.registry:
                c = containers[v.registry]
                reg_watch: dict[str, Callable[[], float]] = {
                    "registry": functools.partial(run_seconds, [c.registry_pid()])}
                if c.spec.network == "bridge":
                    reg_watch["docker-proxy"] = functools.partial(run_seconds, c.proxy_pids())
                up, root, reg_tls = c.upstream, c.data, c.spec.tls
            else:
                reg_watch = {"registry": functools.partial(run_seconds, [registry.pid])}
                up, root, reg_tls = upstream, debian_root, False
            if v.front == "direct":
                endpoints[v.name] = Endpoint(v.name, up.replace("127.0.0.1", "localhost") if reg_tls else up,
                                             tls=v.tls, auth=False, watch=reg_watch, data_root=root)
            elif v.front == "caddy":
                transform, global_options = caddy_transform(v, reg_tls, ca)
                front = start_caddy(procs, work, v.name.replace("+", "-"), up, creds, ca, transform, global_options)
                endpoints[v.name] = Endpoint(v.name, front.host, tls=v.tls, auth=v.auth, caddy=front, data_root=root,
                                             watch={"front": functools.partial(run_seconds, [front.proc.pid]),
                                                    **reg_watch})
            else:
                tuned, cost = NGINX_VARIANTS[v.name]
                nfront = start_nginx(procs, work, v.name, upstream, creds, ca, tuned=tuned, cost=cost)
                endpoints[v.name] = Endpoint(v.name, nfront.host, tls=True, auth=True, data_root=root,
                                             watch={"front": functools.partial(group_cpu, nfront.proc.pid),
                                                    **reg_watch})
        (results / f"{args.out.stem}-fronts.txt").write_text("\n\n".join(
            f"# variant {n}\n" + e.caddy.caddyfile.read_text() for n, e in endpoints.items() if e.caddy))
        skopeo = Skopeo(work, ca, creds, out=layouts / "pulled")
        docker_cm: contextlib.AbstractContextManager[DockerCli | None] = (
            DockerCli(work, ca, creds, list(endpoints.values())) if "docker" in clients
            else contextlib.nullcontext())
        what = f"{parallel} x {args.size_mib} MiB at once" if parallel > 1 else f"{args.size_mib} MiB"
        with docker_cm as docker:
            client_objs: dict[str, Skopeo | DockerCli] = {"skopeo": skopeo} if "skopeo" in clients else {}
            if docker is not None:
                client_objs["docker"] = docker
            series = {f"{c} {op}": Series(f"{c} {op} of {what}, wall time", baseline="direct")
                      for c in client_objs for op in ("push", "pull")}
            # CPU of every party together (client, dockerd, front, registry): what the operation costs the machine,
            # much less sensitive to other load than wall time.
            cpu_series = {f"{c} {op}": Series(f"{c} {op} of {what}, CPU of all parties", baseline="direct",
                                              unit="s CPU")
                          for c in client_objs for op in ("push", "pull")}
            cpu: dict[str, list[dict[str, float]]] = {}
            discarded: list[str] = []
            data_roots = list(dict.fromkeys(e.data_root for e in endpoints.values()))

            def one_round(r: int, tag: str, round_size: int, slots: int, record: bool) -> None:
                """Every variant once per client: pushes back to back in the round's rotated order (layouts made
                first, untimed; for big images just before each variant's push), then the pulls, so the variants
                compared share the same minute. A client's round that fails (e.g. the shared Docker engine
                restarted under us) is discarded as a whole."""
                order = rotated(names, max(r, 0))
                for cname, client in client_objs.items():
                    lays: dict[str, list[Layout]] = {}
                    refs = {v: [f"bench/{v.replace('+', '-')}-{cname}-{i}:{tag}" for i in range(slots)]
                            for v in order}
                    got: dict[str, dict[str, float]] = {"push": {}, "pull": {}}
                    samples: dict[str, dict[str, float]] = {}

                    def make(v: str) -> None:
                        lays[v] = [make_layout(layouts / f"{tag}-{cname}-{v}-{i}", round_size, "bench")  # noqa: B023
                                   for i in range(slots)]

                    try:
                        if not just_in_time:
                            for v in order:
                                make(v)
                        for op in ("push", "pull"):
                            for v in order:
                                ep = endpoints[v]
                                watch = {**ep.watch, **client.watch()}
                                if op == "push":
                                    if just_in_time:
                                        make(v)
                                    for lay, ref in zip(lays[v], refs[v], strict=True):
                                        client.prepare_push(ep, lay.path, ref)
                                    sample = measured([client.push_argv(ep, lay.path, ref)
                                                       for lay, ref in zip(lays[v], refs[v], strict=True)],
                                                      watch, env=client.env)
                                    for lay, ref in zip(lays[v], refs[v], strict=True):
                                        client.after_push(ep, ref)
                                        shutil.rmtree(lay.path, ignore_errors=True)
                                else:
                                    try:
                                        sample = measured([client.pull_argv(ep, ref) for ref in refs[v]], watch,
                                                          env=client.env)
                                    finally:
                                        for ref in refs[v]:
                                            client.dispose(ep, ref)
                                got[op][v] = sample.wall
                                samples[f"{cname} {op} {v}"] = sample.cpu
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        discarded.append(f"round {r + 1} {cname}: {str(exc).splitlines()[0][:200]}")
                        log(f"round {r + 1} {cname} DISCARDED: {exc}")
                        for v in order:
                            for ref in refs[v]:
                                client.dispose(endpoints[v], ref)
                        if len(discarded) > rounds:
                            raise RuntimeError("too many failed rounds: " + "; ".join(discarded)) from exc
                        if cname == "docker":
                            docker_answers()
                        continue
                    finally:
                        digests = [d for ls in lays.values() for lay in ls for d in lay.blobs]
                        for ls in lays.values():
                            for lay in ls:
                                shutil.rmtree(lay.path, ignore_errors=True)
                        for root in data_roots:
                            purge(root, "bench", digests)
                    if record:
                        for key, value in samples.items():
                            cpu.setdefault(key, []).append(value)
                        for op, values in got.items():
                            series[f"{cname} {op}"].add_round(values)
                            cpu_series[f"{cname} {op}"].add_round(
                                {v: sum(samples[f"{cname} {op} {v}"].values()) for v in values})
                        log(f"round {r + 1}/{rounds} {cname}: " + "; ".join(
                            f"{op} " + " ".join(f"{v}={values[v]:.3f}" for v in names) for op, values in got.items()))

            warm = min(size, 16 << 20)
            log(f"warm-up: one untimed push+pull of {warm >> 20} MiB per variant and client ({machine_line()})")
            one_round(-1, "warmup", warm, 1, record=False)
            discarded.clear()
            started = machine_line()
            for r in range(rounds):
                one_round(r, f"r{r}", size, parallel, record=True)
            profile_text = ""
            if args.profile and "caddy" in endpoints:
                profile_text = profile_caddy(endpoints["caddy"], skopeo, layouts, size, args.profile, results,
                                             procs, perf_usable())

    gib = size * parallel / (1 << 30)
    report = [f"bench/proxy.py: started {started}; finished {machine_line()}",
              f"{rounds} rounds, {what} per variant and operation, a fresh random layer per push; each round: all "
              "pushes back to back in a rotated order, then all pulls; the fronts on loopback with TLS (test CA, "
              "ECDSA P-256) and basic auth; clients: " + ", ".join(client_objs),
              f"registry image for the containers: {image}" if image else "", *skipped,
              *(f"discarded: {d}" for d in discarded), "where each containerised registry listens:",
              *(f"  {e}" for e in exposure), "variants:"]
    for v in variants:
        report.append(f"  {v.name:<22} {v.note()}")
    report.append("")
    report += [s.render() for s in series.values()]
    report += [""] + [s.render() for s in cpu_series.values()]
    if pairs:
        report += [""] + [s.render_pairs(pairs) for s in series.values()]
        report += [""] + [s.render_pairs(pairs) for s in cpu_series.values()]
    report += ["", f"CPU seconds per operation ({what}; median over rounds), and per GiB moved: client = the skopeo "
               "or docker CLI processes; dockerd incl. its helpers; front = Caddy or nginx (all workers); registry; "
               "docker-proxy"]
    for key, samples in cpu.items():
        parts = sorted({k for s in samples for k in s})
        meds = {k: statistics.median(s.get(k, 0.0) for s in samples) for k in parts}
        report.append(f"  {key:<40} " + "  ".join(f"{k} {m:.3f} ({m / gib:.2f}/GiB)" for k, m in meds.items()))
    if profile_text:
        report += ["", profile_text]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
