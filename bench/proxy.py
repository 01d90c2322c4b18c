"""Proxy overhead: push and pull of a fresh random image straight to the registry, through the program's generated
Caddy site, and through the nginx front from Distribution's documentation, side by side in one run.

    .venv/bin/python -m bench.proxy [--rounds 9] [--size-mib 64] [--clients skopeo,docker]
        [--variants direct,caddy,nginx-doc,nginx-tuned,...] [--profile 10] [--out bench/results/proxy.txt]

Run as root: the Docker CLI client needs /etc/docker/certs.d/<host:port>/ca.crt (added and removed here).

Every round pushes a NEW random layer per variant and client (nothing is ever reused from the registry), then
pulls that image back; the variants run in a rotated order and each ratio is taken within its round. Besides wall
time it records the CPU seconds each party spent (client, front, registry) per operation, and with --profile it
captures Caddy's own CPU profile (admin endpoint /debug/pprof/profile) during pushes and pulls through the
generated site and prints the top consumers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import resource
import statistics
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import _pprof
from bench._common import (
    ROOT,
    Processes,
    Series,
    TestCA,
    cpu_seconds,
    free_port,
    group_pids,
    log,
    machine_line,
    make_ca,
    rotated,
    run,
    run_seconds,
    scratch,
    write_report,
)
from bench._fronts import (
    BCRYPT_COST,
    NGINX_DOC_COST,
    PUSH_USER,
    CaddyFront,
    Credentials,
    block_end,
    drop_auth,
    find_directive,
    start_caddy,
    start_nginx,
    start_registry,
)

# --- what is compared ------------------------------------------------------------------------------------------


def _proxy_block(options: str) -> Callable[[str], str]:
    """A transform of the generated site: add options to its one `reverse_proxy UPSTREAM` (block or line)."""

    def transform(site: str) -> str:
        lines = site.split("\n")
        i = find_directive(lines, "reverse_proxy")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        body = [f"{indent}\t{ln}" for ln in options.strip("\n").split("\n")]
        if lines[i].endswith("{"):
            lines[i + 1:i + 1] = body
        else:
            lines[i:i + 1] = [lines[i] + " {", *body, f"{indent}}}"]
        return "\n".join(lines)

    return transform


def _drop_directive(name: str) -> Callable[[str], str]:
    def transform(site: str) -> str:
        lines = site.split("\n")
        i = find_directive(lines, name)
        end = block_end(lines, i) if lines[i].endswith("{") else i
        return "\n".join(lines[:i] + lines[end + 1:])

    return transform


def _access_log(site: str) -> str:
    """An access log (what fail2ban would read): one JSON line per request, here to Caddy's stderr = a file."""
    lines = site.split("\n")
    i = find_directive(lines, "tls")
    lines[i + 1:i + 1] = ["\tlog {", "\t\toutput stderr", "\t}"]
    return "\n".join(lines)


def _plain_http(site: str) -> str:
    """Diagnostic: the site served over plain HTTP (no `tls`), to separate TLS cost from the extra hop."""
    lines = site.split("\n")
    del lines[find_directive(lines, "tls")]
    head = next(i for i, ln in enumerate(lines) if ln.endswith(" {") and not ln.startswith(("\t", "#", "{")))
    lines[head] = "http://" + lines[head]
    return "\n".join(lines)


@dataclass(frozen=True)
class CaddyVariant:
    transform: Callable[[str], str]
    global_options: str = ""
    tls: bool = True
    auth: bool = True
    note: str = ""


CADDY_VARIANTS: dict[str, CaddyVariant] = {
    "caddy": CaddyVariant(lambda s: s, note="the generated site as rendered (only the tls line swapped)"),
    "caddy+buffers": CaddyVariant(
        _proxy_block("transport http {\n\tread_buffer 256KiB\n\twrite_buffer 256KiB\n}"),
        note="bigger buffers on the Caddy -> registry connection (Go's http.Transport defaults: 4 KiB each)"),
    "caddy+flush": CaddyVariant(_proxy_block("flush_interval -1"),
                                note="flush every response write to the client at once"),
    "caddy+log": CaddyVariant(_access_log, note="with an access log (JSON line per request) for fail2ban"),
    "caddy-noencode": CaddyVariant(_drop_directive("encode"),
                                   note="diagnostic: without `encode` (blobs are never compressed anyway)"),
    "caddy-h1": CaddyVariant(lambda s: s, "\tservers {\n\t\tprotocols h1\n\t}\n",
                             note="diagnostic: HTTP/1.1 only to clients (a global option, outside the site file)"),
    "caddy-noauth": CaddyVariant(drop_auth, auth=False, note="diagnostic: without basic_auth (never deploy)"),
    "caddy-plainhttp": CaddyVariant(_plain_http, tls=False,
                                    note="diagnostic: plain HTTP, i.e. the extra hop without TLS (never deploy)"),
}
# name -> (streaming and keep-alive added, bcrypt cost of the htpasswd file)
NGINX_VARIANTS = {"nginx-doc": (False, NGINX_DOC_COST), "nginx-tuned": (True, NGINX_DOC_COST),
                  "nginx-doc-c10": (False, BCRYPT_COST), "nginx-tuned-c10": (True, BCRYPT_COST)}
NGINX_NOTES = {
    "nginx-doc": "Distribution's documented nginx front, as written (request and response buffering on, HTTP/1.0 "
                 "upstream; `htpasswd -B` = bcrypt cost 5, checked on every request: nginx has no cache)",
    "nginx-tuned": "nginx-doc + proxy_request_buffering off, proxy_buffering off, HTTP/1.1 keep-alive upstream",
    "nginx-doc-c10": "nginx-doc with the program's bcrypt cost (10)",
    "nginx-tuned-c10": "nginx-tuned with the program's bcrypt cost (10)",
}
DEFAULT_VARIANTS = ("direct", "caddy", "caddy+buffers", "caddy+flush", "caddy+log", "caddy-plainhttp", "direct-docker",
                    "caddy-docker", "nginx-doc", "nginx-tuned", "nginx-tuned-c10")


@dataclass
class Endpoint:
    name: str
    host: str
    tls: bool
    auth: bool
    cpu: Callable[[], float] = lambda: 0.0
    caddy: CaddyFront | None = None
    watch: dict[str, Callable[[], float]] = field(default_factory=dict)
    """Extra processes to account (and a different `registry`), for the containerised registry."""


# --- the registry as production runs it: a container whose 127.0.0.1 port docker-proxy publishes ---------------

DOCKER_VARIANTS = {
    "direct-docker": "diagnostic: the registry:2 stand-in image in the outer Docker, published on 127.0.0.1 (loopback "
                     "traffic goes through docker-proxy, as on the production host)",
    "caddy-docker": "diagnostic: the generated site in front of that container (the production path)",
}


def newest_image(repository: str) -> str | None:
    out = run(["docker", "images", repository, "--format", "{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}"],
              check=False, timeout=60).stdout.split("\n")
    rows = sorted((ln.split("\t") for ln in out if "\t" in ln), reverse=True)
    return rows[0][1] if rows else None


class RegistryContainer:
    """`docker run -d -p 127.0.0.1:PORT:5000 IMAGE` (the seed's command), removed on exit."""

    def __init__(self, image: str, work: Path) -> None:
        self.image = image
        self.name = f"bench-proxy-registry-{os.getpid()}"
        self.data = work / "container-registry-data"
        self.port = 0

    def __enter__(self) -> RegistryContainer:
        self.data.mkdir(exist_ok=True)
        for _ in range(3):
            self.port = free_port()
            started = run(["docker", "run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:5000",
                           "-e", "REGISTRY_STORAGE_DELETE_ENABLED=true", "-v", f"{self.data}:/var/lib/registry",
                           self.image], check=False, timeout=120)
            if started.returncode == 0:
                break
            run(["docker", "rm", "-f", self.name], check=False, timeout=60)
        else:
            raise RuntimeError(f"docker run {self.image} failed: {started.stderr}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=5) as resp:  # noqa: S310
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the registry container {self.name} did not answer on 127.0.0.1:{self.port}")

    def __exit__(self, *exc: object) -> None:
        run(["docker", "rm", "-f", "-v", self.name], check=False, timeout=120)

    def registry_pid(self) -> int:
        return int(run(["docker", "inspect", "-f", "{{.State.Pid}}", self.name], timeout=60).stdout.strip())

    def proxy_pids(self) -> list[int]:
        """The docker-proxy process(es) publishing this container's port."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv and argv[0].endswith(b"docker-proxy") and str(self.port).encode() in argv:
                    pids.append(int(entry.name))
        return pids


# --- a fresh random image --------------------------------------------------------------------------------------


def make_layout(dest: Path, size: int, tag: str) -> str:
    """An OCI layout holding one image: a gzip (stored, level 0) tar layer of `size` random bytes, its config and
    manifest. Level 0 keeps generation cheap; clients never recompress a layer that is already gzip."""
    data = os.urandom(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("random.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    del data
    layer_tar = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer = gzip.compress(layer_tar, compresslevel=0, mtime=0)
    del layer_tar
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        (blobs / digest).write_bytes(blob)
        return "sha256:" + digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(layer),
                    "size": len(layer)}],
    }).encode()
    manifest_digest = put(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return manifest_digest


# --- one measured command --------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)


def measured(argv: list[str], watch: dict[str, Callable[[], float]], env: dict[str, str] | None = None,
             timeout: float = 600) -> Sample:
    """Wall time of `argv` plus the CPU seconds it (client) and each watched process spent meanwhile."""
    before = {k: f() for k, f in watch.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603 - argv is built by the benchmark
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    wall = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err[-3000:]}")
    cpu = {"client": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}
    cpu.update({k: f() - before[k] for k, f in watch.items()})
    return Sample(wall=wall, cpu=cpu)


# --- clients ---------------------------------------------------------------------------------------------------


class Skopeo:
    name = "skopeo"

    def __init__(self, work: Path, ca: TestCA, creds: Credentials, out: Path) -> None:
        self.certs = work / "skopeo-certs"
        self.certs.mkdir()
        (self.certs / "ca.crt").write_bytes(ca.ca.read_bytes())
        self.creds = creds
        self.out = out
        out.mkdir()

    def _opts(self, ep: Endpoint, side: str) -> list[str]:
        opts = [f"--{side}-cert-dir", str(self.certs)] if ep.tls else [f"--{side}-tls-verify=false"]
        if ep.auth:
            opts += [f"--{side}-creds", f"{PUSH_USER}:{self.creds.push_password}"]
        return opts

    def push(self, ep: Endpoint, layout: Path, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        return measured(["skopeo", "copy", "--quiet", *self._opts(ep, "dest"), f"oci:{layout}:bench",
                         f"docker://{ep.host}/{ref}"], watch)

    def pull(self, ep: Endpoint, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        dest = self.out / ref.replace("/", "_").replace(":", "_")
        try:
            return measured(["skopeo", "copy", "--quiet", *self._opts(ep, "src"), f"docker://{ep.host}/{ref}",
                             f"dir:{dest}"], watch)
        finally:
            run(["rm", "-rf", str(dest)])

    def dispose(self, ep: Endpoint, ref: str) -> None:
        pass


class DockerCli:
    """docker push/pull through the outer dockerd. The image is loaded into the daemon (untimed) under its final
    name, pushed (timed), removed, pulled back (timed) and removed again."""

    name = "docker"

    def __init__(self, work: Path, ca: TestCA, creds: Credentials, endpoints: list[Endpoint]) -> None:
        self.env = {"DOCKER_CONFIG": str(work / "docker-config")}
        self.ca = ca
        self.creds = creds
        self.endpoints = endpoints
        self.made_dirs: list[Path] = []
        self.images: set[str] = set()

    def __enter__(self) -> DockerCli:
        certs_d = Path("/etc/docker/certs.d")
        for ep in self.endpoints:
            if not ep.auth:
                continue
            if not ep.tls:  # plain HTTP on loopback: dockerd treats 127.0.0.0/8 as an insecure registry
                run(["docker", "login", ep.host, "-u", PUSH_USER, "--password-stdin"], env=self.env,
                    input_text=self.creds.push_password, timeout=60)
                continue
            # The daemon trusts a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt; removed on exit.
            for d in (certs_d, certs_d / ep.host):
                if not d.exists():
                    d.mkdir()
                    self.made_dirs.append(d)
            (certs_d / ep.host / "ca.crt").write_bytes(self.ca.ca.read_bytes())
            run(["docker", "login", ep.host, "-u", PUSH_USER, "--password-stdin"], env=self.env,
                input_text=self.creds.push_password, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        for image in sorted(self.images):  # whatever a failure left behind in the daemon
            run(["docker", "rmi", "-f", image], env=self.env, timeout=120, check=False)
        for d in reversed(self.made_dirs):
            run(["rm", "-rf", str(d)], check=False)

    @staticmethod
    def dockerd_cpu() -> float:
        pid_file = Path("/var/run/docker.pid")  # read each time: the engine may have been restarted
        try:
            return cpu_seconds([int(pid_file.read_text().strip())], children=True)
        except (OSError, ValueError):
            return 0.0

    def watch(self) -> dict[str, Callable[[], float]]:
        return {"dockerd": self.dockerd_cpu}

    def push(self, ep: Endpoint, layout: Path, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        full = f"{ep.host}/{ref}"
        self.images.add(full)
        run(["skopeo", "copy", "--quiet", f"oci:{layout}:bench", f"docker-daemon:{full}"], timeout=300)
        sample = measured(["docker", "push", "--quiet", full], {**watch, **self.watch()}, env=self.env)
        run(["docker", "rmi", full], env=self.env, timeout=120)
        return sample

    def pull(self, ep: Endpoint, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        full = f"{ep.host}/{ref}"
        return measured(["docker", "pull", "--quiet", full], {**watch, **self.watch()}, env=self.env)

    def dispose(self, ep: Endpoint, ref: str) -> None:
        run(["docker", "rmi", f"{ep.host}/{ref}"], env=self.env, timeout=120, check=False)
        self.images.discard(f"{ep.host}/{ref}")


def group_cpu(pgid: int) -> float:
    return run_seconds(group_pids(pgid))


def docker_answers(wait: float = 90.0) -> bool:
    """Whether the outer Docker engine answers, waiting up to `wait` seconds (other work may restart it)."""
    deadline = time.monotonic() + wait
    while True:
        if run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(2)


def docker_problem() -> str | None:
    """Why the Docker CLI variant cannot run here, or None."""
    if not docker_answers():
        return "the outer Docker engine does not answer (`docker info` fails); start it with tests/e2e/start-dockerd.sh"
    if os.geteuid() != 0:
        return "writing /etc/docker/certs.d/<host:port>/ca.crt needs root"
    return None


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


# --- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--clients", default="skopeo,docker")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"direct and any of {', '.join([*CADDY_VARIANTS, *NGINX_VARIANTS, *DOCKER_VARIANTS])}")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="also capture Caddy CPU profiles of pushes and pulls for this many seconds each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy.txt")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders (logs, configs)")
    parser.add_argument("--registry-image", help="image for the direct-docker/caddy-docker variants "
                        "(default: the newest regtest-registry:* built by tests/e2e/testhost.py)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 50))
    size = args.size_mib << 20
    variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [v for v in variants
               if v != "direct" and v not in CADDY_VARIANTS and v not in NGINX_VARIANTS and v not in DOCKER_VARIANTS]
    if unknown or "direct" not in variants:
        parser.error(f"unknown variants {unknown}; `direct` (the baseline) is required")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    skipped: list[str] = []
    if "docker" in clients and (problem := docker_problem()):
        skipped.append(f"docker CLI variant skipped: {problem}")
        clients.remove("docker")
    results = args.out.parent
    results.mkdir(parents=True, exist_ok=True)

    # The random layouts and pulled copies live on tmpfs so their disk writeback does not disturb the timings.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 - a private mkdtemp folder inside
    image = None
    if any(v in DOCKER_VARIANTS for v in variants):
        image = args.registry_image or (newest_image("regtest-registry") if docker_answers(30) else None)
        if image is None:
            skipped.append("containerised-registry variants skipped: no registry image (build the e2e images with "
                           "`python -m tests.e2e.testhost build`, or pass --registry-image) or Docker not answering")
            variants = [v for v in variants if v not in DOCKER_VARIANTS]
    with Processes() as procs, scratch("bench-proxy-", args.keep) as work, \
            scratch("bench-proxy-", args.keep, base=shm) as layouts, contextlib.ExitStack() as stack:
        ca = make_ca(work / "tls")
        creds = Credentials.generate()
        registry, port = start_registry(procs, work)
        upstream = f"127.0.0.1:{port}"
        container = stack.enter_context(RegistryContainer(image, work)) if image else None
        endpoints: dict[str, Endpoint] = {"direct": Endpoint("direct", upstream, tls=False, auth=False)}
        for name in variants:
            if name in CADDY_VARIANTS:
                cv = CADDY_VARIANTS[name]
                front = start_caddy(procs, work, name.replace("+", "-"), upstream, creds, ca, cv.transform,
                                    cv.global_options)
                endpoints[name] = Endpoint(name, front.host, tls=cv.tls, auth=cv.auth, caddy=front,
                                           cpu=functools.partial(run_seconds, [front.proc.pid]))
            elif name in NGINX_VARIANTS:
                tuned, cost = NGINX_VARIANTS[name]
                nfront = start_nginx(procs, work, name, upstream, creds, ca, tuned=tuned, cost=cost)
                endpoints[name] = Endpoint(name, nfront.host, tls=True, auth=True,
                                           cpu=functools.partial(group_cpu, nfront.proc.pid))
        if container is not None:
            cup = f"127.0.0.1:{container.port}"
            container_watch: dict[str, Callable[[], float]] = {
                "registry": functools.partial(run_seconds, [container.registry_pid()]),
                "docker-proxy": functools.partial(run_seconds, container.proxy_pids()),
            }
            if "direct-docker" in variants:
                endpoints["direct-docker"] = Endpoint("direct-docker", cup, tls=False, auth=False, watch=container_watch)
            if "caddy-docker" in variants:
                front = start_caddy(procs, work, "caddy-docker", cup, creds, ca)
                endpoints["caddy-docker"] = Endpoint("caddy-docker", front.host, tls=True, auth=True, caddy=front,
                                                     cpu=functools.partial(run_seconds, [front.proc.pid]),
                                                     watch=container_watch)
        (results / "proxy-fronts.txt").write_text("\n\n".join(
            f"# variant {n}\n" + e.caddy.caddyfile.read_text() for n, e in endpoints.items() if e.caddy))
        skopeo = Skopeo(work, ca, creds, out=layouts / "pulled")
        docker_cm: contextlib.AbstractContextManager[DockerCli | None] = (
            DockerCli(work, ca, creds, list(endpoints.values())) if "docker" in clients
            else contextlib.nullcontext())
        with docker_cm as docker:
            client_objs: dict[str, Skopeo | DockerCli] = {"skopeo": skopeo}
            if docker is not None:
                client_objs["docker"] = docker
            series = {f"{c} {op}": Series(f"{c} {op} of {args.size_mib} MiB, wall time", baseline="direct")
                      for c in client_objs for op in ("push", "pull")}
            # CPU of every party together (client, dockerd, front, registry): what the operation costs the machine,
            # much less sensitive to other load than wall time.
            cpu_series = {f"{c} {op}": Series(f"{c} {op} of {args.size_mib} MiB, CPU of all parties", baseline="direct",
                                              unit="s CPU")
                          for c in client_objs for op in ("push", "pull")}
            cpu: dict[str, list[dict[str, float]]] = {}
            watch_registry = functools.partial(run_seconds, [registry.pid])

            discarded: list[str] = []

            def one_round(r: int, tag: str) -> None:
                """Every variant once per client: layouts first (untimed), then the pushes back to back in the
                round's rotated order, then the pulls, so the variants compared share the same minute. A client's
                round that fails (e.g. the shared Docker engine restarted under us) is discarded as a whole."""
                order = rotated(variants, r)
                for cname, client in client_objs.items():
                    lays = {v: layouts / f"{tag}-{cname}-{v}" for v in order}
                    ref = {v: f"bench/{v.replace('+', '-')}-{cname}:{tag}" for v in order}
                    got: dict[str, dict[str, float]] = {"push": {}, "pull": {}}
                    samples: dict[str, dict[str, float]] = {}
                    try:
                        for v in order:
                            make_layout(lays[v], size, "bench")
                        for op in ("push", "pull"):
                            for v in order:
                                ep = endpoints[v]
                                watch: dict[str, Callable[[], float]] = {
                                    "front": ep.cpu, "registry": watch_registry, **ep.watch}
                                if op == "push":
                                    sample = client.push(ep, lays[v], ref[v], watch)
                                    run(["rm", "-rf", str(lays[v])])
                                else:
                                    sample = client.pull(ep, ref[v], watch)
                                    client.dispose(ep, ref[v])
                                got[op][v] = sample.wall
                                samples[f"{cname} {op} {v}"] = sample.cpu
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        discarded.append(f"round {r + 1} {cname}: {str(exc).splitlines()[0][:200]}")
                        log(f"round {r + 1} {cname} DISCARDED: {exc}")
                        for v in order:
                            run(["rm", "-rf", str(lays[v])])
                            client.dispose(endpoints[v], ref[v])
                        if len(discarded) > rounds:
                            raise RuntimeError("too many failed rounds: " + "; ".join(discarded)) from exc
                        if cname == "docker":
                            docker_answers()
                        continue
                    if r >= 0:
                        for key, value in samples.items():
                            cpu.setdefault(key, []).append(value)
                        for op, values in got.items():
                            series[f"{cname} {op}"].add_round(values)
                            cpu_series[f"{cname} {op}"].add_round(
                                {v: sum(samples[f"{cname} {op} {v}"].values()) for v in values})
                        log(f"round {r + 1}/{rounds} {cname}: " + "; ".join(
                            f"{op} " + " ".join(f"{v}={values[v]:.3f}" for v in variants) for op, values in got.items()))

            log(f"warm-up: one untimed push+pull per variant and client ({machine_line()})")
            one_round(-1, "warmup")
            discarded.clear()
            for r in range(rounds):
                one_round(r, f"r{r}")
            profile_text = ""
            if args.profile and "caddy" in endpoints:
                profile_text = profile_caddy(endpoints["caddy"], skopeo, layouts, size, args.profile, results,
                                             procs, perf_usable())

    report = [f"bench/proxy.py: {machine_line()}",
              f"registry: Debian docker-registry (Distribution 2.8) on {upstream}; fronts on loopback with TLS "
              f"(test CA, ECDSA P-256) and basic auth; {rounds} rounds, fresh random "
              f"{args.size_mib} MiB layer per push; each round: all pushes back to back in a rotated order, "
              "then all pulls", *skipped, *(f"discarded: {d}" for d in discarded), "variants:"]
    for v in variants:
        note = "the registry itself, plain HTTP" if v == "direct" else (
            CADDY_VARIANTS[v].note if v in CADDY_VARIANTS else NGINX_NOTES.get(v) or DOCKER_VARIANTS[v])
        report.append(f"  {v:<18} {note}")
    report.append("")
    report += [s.render() for s in series.values()]
    report += [""] + [s.render() for s in cpu_series.values()]
    report += ["", "CPU seconds per operation (median over rounds): client = the skopeo or docker CLI process; "
               "dockerd incl. its helpers; front = Caddy or nginx (all workers); registry"]
    for key, samples in cpu.items():
        parts = sorted({k for s in samples for k in s})
        report.append(f"  {key:<34} " + "  ".join(
            f"{k} {statistics.median(s.get(k, 0.0) for s in samples):.3f}" for k in parts))
    if profile_text:
        report += ["", profile_text]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
