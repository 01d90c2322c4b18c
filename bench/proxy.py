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
import gzip
import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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
from renderers.registry_env import render_registry_env

# --- what is compared: Caddy site options ----------------------------------------------------------------------


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


def _identity(site: str) -> str:
    return site


@dataclass(frozen=True)
class CaddyOption:
    """One change to the generated site: a whole-site transform, lines added inside its `reverse_proxy` block,
    lines inside that block's `transport http { }`, or global options (outside the site file)."""

    note: str
    transform: Callable[[str], str] = _identity
    proxy_lines: tuple[str, ...] = ()
    transport_lines: tuple[str, ...] = ()
    global_options: str = ""
    tls: bool = True
    auth: bool = True


CADDY_OPTIONS: dict[str, CaddyOption] = {
    "buffers": CaddyOption("transport read_buffer/write_buffer 256KiB on the Caddy -> registry connection (Go's "
                           "http.Transport defaults: 4 KiB each)",
                           transport_lines=("read_buffer 256KiB", "write_buffer 256KiB")),
    "flush": CaddyOption("flush_interval -1: flush every response write to the client at once",
                         proxy_lines=("flush_interval -1",)),
    "h1": CaddyOption("transport versions 1.1 to the registry", transport_lines=("versions 1.1",)),
    "h2": CaddyOption("transport versions 2 to the registry (HTTP/2 needs TLS: Distribution 2.8 has no h2c)",
                      transport_lines=("versions 2",)),
    "h2c": CaddyOption("transport versions h2c to the registry (cleartext HTTP/2)", transport_lines=("versions h2c",)),
    "log": CaddyOption("with an access log (JSON line per request) for fail2ban", transform=_access_log),
    "noencode": CaddyOption("diagnostic: without `encode` (blobs are never compressed anyway)",
                            transform=_drop_directive("encode")),
    "h1client": CaddyOption("diagnostic: HTTP/1.1 only to clients (a global option, outside the site file)",
                            global_options="\tservers {\n\t\tprotocols h1\n\t}\n"),
    "noauth": CaddyOption("diagnostic: without basic_auth (never deploy)", transform=drop_auth, auth=False),
    "plainhttp": CaddyOption("diagnostic: plain HTTP, i.e. the extra hop without TLS (never deploy)",
                             transform=_plain_http, tls=False),
}

# --- what is compared: where the registry runs and how Caddy reaches it ----------------------------------------


@dataclass(frozen=True)
class RegistrySpec:
    """The registry:2 stand-in image run by the outer Docker, as components/registry.py runs it (its env file
    from render_registry_env, the data directory bind-mounted), in one network set-up."""

    network: str
    """bridge: `-p 127.0.0.1:P:5000` (docker-proxy); host: `--network host` + REGISTRY_HTTP_ADDR=127.0.0.1:P;
    unix: `--network none` + REGISTRY_HTTP_NET=unix, the socket in a folder bind-mounted for Caddy."""
    note: str
    env: tuple[tuple[str, str], ...] = ()
    tls: bool = False
    docker_args: tuple[str, ...] = ()


QUIET_ENV = (("REGISTRY_LOG_LEVEL", "warn"), ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true"))
REGISTRIES: dict[str, RegistrySpec] = {
    "docker": RegistrySpec("bridge", "(a) today: `-p 127.0.0.1:P:5000`; loopback traffic goes through docker-proxy"),
    "host": RegistrySpec("host", "(b) `--network host`, REGISTRY_HTTP_ADDR=127.0.0.1:P"),
    "unix": RegistrySpec("unix", "(c) `--network none`, REGISTRY_HTTP_NET=unix, REGISTRY_HTTP_ADDR=/run/registry/"
                                 "registry.sock in a folder shared with Caddy (`reverse_proxy unix//...`)"),
    "hostquiet": RegistrySpec("host", "(b) with REGISTRY_LOG_LEVEL=warn, REGISTRY_LOG_ACCESSLOG_DISABLED=true "
                                      "(no log line per request)", env=QUIET_ENV),
    "hostnolog": RegistrySpec("host", "(b) with `--log-driver none` (dockerd stores none of the registry's output)",
                              docker_args=("--log-driver", "none")),
    "hostnocache": RegistrySpec("host", "(b) with REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none (an unknown kind: the blob "
                                             "descriptor cache is off)",
                                env=(("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "none"),)),
    "hosttls": RegistrySpec("host", "(b) serving TLS itself (test certificate; Caddy trusts the test CA): the only way "
                                    "to HTTP/2 upstream with Distribution 2.8", tls=True),
}


class RegistryContainer:
    """`docker run -d ... IMAGE` in one network set-up, removed (with its anonymous volumes) on exit."""

    def __init__(self, key: str, spec: RegistrySpec, image: str, work: Path, ca: TestCA) -> None:
        self.key, self.spec, self.image, self.ca = key, spec, image, ca
        self.name = f"bench-proxy-{key}-{os.getpid()}"
        self.data = work / f"registry-data-{key}"
        self.env_file = work / f"registry-{key}.env"
        self.sock_dir = work / f"registry-sock-{key}"
        self.port = 0

    @property
    def socket(self) -> Path:
        return self.sock_dir / "registry.sock"

    @property
    def upstream(self) -> str:
        """What Caddy's `reverse_proxy` and a direct client get."""
        return f"unix/{self.socket}" if self.spec.network == "unix" else f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        env = render_registry_env(secrets.token_hex(24))
        env += "".join(f"{k}={v}\n" for k, v in self.spec.env)
        argv = ["docker", "run", "-d", "--name", self.name, "--env-file", str(self.env_file),
                "-v", f"{self.data}:/var/lib/registry", *self.spec.docker_args]
        if self.spec.network == "bridge":
            argv += ["-p", f"127.0.0.1:{self.port}:5000"]
        elif self.spec.network == "host":
            argv += ["--network", "host"]
            env += f"REGISTRY_HTTP_ADDR=127.0.0.1:{self.port}\n"
        else:
            argv += ["--network", "none", "-v", f"{self.sock_dir}:/run/registry"]
            env += "REGISTRY_HTTP_NET=unix\nREGISTRY_HTTP_ADDR=/run/registry/registry.sock\n"
        if self.spec.tls:
            argv += ["-v", f"{self.ca.cert.parent}:/certs:ro"]
            env += (f"REGISTRY_HTTP_TLS_CERTIFICATE=/certs/{self.ca.cert.name}\n"
                    f"REGISTRY_HTTP_TLS_KEY=/certs/{self.ca.key.name}\n")
        self.env_file.write_text("")
        self.env_file.chmod(0o600)
        self.env_file.write_text(env)
        return [*argv, self.image]

    def __enter__(self) -> RegistryContainer:
        self.data.mkdir(exist_ok=True)
        self.sock_dir.mkdir(exist_ok=True)
        for _ in range(3):
            self.port = free_port()
            started = run(self._argv(), check=False, timeout=120)
            if started.returncode == 0:
                break
            run(["docker", "rm", "-f", self.name], check=False, timeout=60)
        else:
            raise RuntimeError(f"docker run {self.image} ({self.key}) failed: {started.stderr}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.answers():
                return self
            time.sleep(0.2)
        logs = run(["docker", "logs", "--tail", "20", self.name], check=False, timeout=60)
        raise RuntimeError(f"the registry container {self.name} did not answer: {logs.stdout}{logs.stderr}")

    def __exit__(self, *exc: object) -> None:
        run(["docker", "rm", "-f", "-v", self.name], check=False, timeout=120)

    def answers(self) -> bool:
        """GET /v2/ over the registry's own transport answers 200."""
        try:
            if self.spec.network == "unix":
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.socket))
                    s.sendall(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    return b" 200 " in s.recv(64).split(b"\r\n", 1)[0] + b" "
            scheme = "https" if self.spec.tls else "http"
            ctx = ssl.create_default_context(cafile=str(self.ca.ca)) if self.spec.tls else None
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/v2/", timeout=5,  # noqa: S310
                                        context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def registry_pid(self) -> int:
        return int(run(["docker", "inspect", "-f", "{{.State.Pid}}", self.name], timeout=60).stdout.strip())

    def proxy_pids(self) -> list[int]:
        """The docker-proxy process(es) publishing this container's port (none unless the network is bridge)."""
        if self.spec.network != "bridge":
            return []
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

    def exposure(self) -> str:
        """Where this registry listens: TCP listeners in its network namespace (`nsenter -n ss -ltn`), docker-proxy's
        host listener if any, and the reply of the seed's check (or its Unix-socket replacement)."""
        pid = self.registry_pid()
        ss = run(["nsenter", "-t", str(pid), "-n", "ss", "-Hltnp"], check=False, timeout=30).stdout.splitlines()
        listeners = " ".join(ln.split()[3] for ln in ss if f"pid={pid}," in ln and len(ln.split()) > 3) or "none"
        if self.spec.network == "bridge":
            host_ss = run(["ss", "-Hltnp"], check=False, timeout=30).stdout.splitlines()
            proxy = {f"pid={p}," for p in self.proxy_pids()}
            listeners += " (host: docker-proxy on " + " ".join(
                ln.split()[3] for ln in host_ss if any(p in ln for p in proxy) and len(ln.split()) > 3) + ")"
        if self.spec.network == "unix":
            check = ["curl", "-fsS", "--unix-socket", str(self.socket), "http://localhost/v2/"]
            shown = "curl -fsS --unix-socket /run/registry/registry.sock http://localhost/v2/"
        else:
            scheme = "https" if self.spec.tls else "http"
            check = ["curl", "-fsS", *(["--cacert", str(self.ca.ca)] if self.spec.tls else []),
                     f"{scheme}://localhost:{self.port}/v2/"]
            shown = f"curl -fsS {scheme}://localhost:{self.port}/v2/"
        got = run(check, check=False, timeout=30)
        reply = f"exit {got.returncode}, body {got.stdout.strip()!r}"
        return (f"{self.key}: the registry process's TCP listeners (in its network namespace): {listeners}; "
                f"`{shown}` -> {reply}")


def newest_image(repository: str) -> str | None:
    out = run(["docker", "images", repository, "--format", "{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}"],
              check=False, timeout=60).stdout.split("\n")
    rows = sorted((ln.split("\t") for ln in out if "\t" in ln), reverse=True)
    return rows[0][1] if rows else None


# --- variants --------------------------------------------------------------------------------------------------

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
DEFAULT_VARIANTS = ("direct", "direct-host", "direct-docker", "caddy", "caddy-docker", "caddy-host", "caddy-unix")


@dataclass(frozen=True)
class Variant:
    name: str
    front: str
    """direct, caddy or nginx"""
    registry: str
    """"" (the Debian docker-registry process on loopback) or a key of REGISTRIES"""
    options: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        if self.front == "direct":
            return bool(self.registry) and REGISTRIES[self.registry].tls
        return all(CADDY_OPTIONS[o].tls for o in self.options)

    @property
    def auth(self) -> bool:
        return self.front != "direct" and all(CADDY_OPTIONS[o].auth for o in self.options)

    def note(self) -> str:
        if self.front == "nginx":
            return NGINX_NOTES[self.name]
        where = (f"registry {self.registry}: {REGISTRIES[self.registry].note}" if self.registry
                 else "the Debian docker-registry process on 127.0.0.1, plain HTTP")
        if self.front == "direct":
            return f"the client straight to {where}"
        opts = "".join(f"; +{o}: {CADDY_OPTIONS[o].note}" for o in self.options)
        return f"the generated site in front of {where}{opts}"


def parse_variant(name: str) -> Variant:
    """`direct[-REG]`, `caddy[-REG][+OPTION...]` or an nginx variant; ValueError names what is accepted."""
    if name in NGINX_VARIANTS:
        return Variant(name, "nginx", "")
    head, *options = name.split("+")
    front, _, registry = head.partition("-")
    if front not in ("direct", "caddy") or (registry and registry not in REGISTRIES):
        raise ValueError(f"variant {name!r}: expected direct[-REG], caddy[-REG][+OPTION...] or one of "
                         f"{', '.join(NGINX_VARIANTS)}; REG is one of {', '.join(REGISTRIES)}")
    bad = [o for o in options if o not in CADDY_OPTIONS]
    if bad or (front == "direct" and options):
        raise ValueError(f"variant {name!r}: options {bad or options} not accepted; a caddy variant takes any of "
                         f"{', '.join(CADDY_OPTIONS)}, a direct one none")
    if front == "direct" and registry and REGISTRIES[registry].network == "unix":
        raise ValueError(f"variant {name!r}: skopeo and the Docker CLI cannot reach a registry over a Unix socket; "
                         "its clients always go through Caddy (the baseline stays `direct`)")
    return Variant(name, front, registry, tuple(options))


def caddy_transform(variant: Variant, registry_tls: bool, ca: TestCA) -> tuple[Callable[[str], str], str]:
    """The site transform and global options of a caddy variant: its options' transforms in order, then every
    `reverse_proxy` and `transport http` line they add (and, for a TLS registry, the test CA as trust pool)."""
    opts = [CADDY_OPTIONS[o] for o in variant.options]
    transport = [ln for o in opts for ln in o.transport_lines]
    if registry_tls:
        transport = [f"tls_trust_pool file {ca.ca}", *transport]
    proxy = [ln for o in opts for ln in o.proxy_lines]
    if transport:
        proxy += ["transport http {", *(f"\t{ln}" for ln in transport), "}"]

    def transform(site: str) -> str:
        for o in opts:
            site = o.transform(site)
        if not proxy:
            return site
        lines = site.split("\n")
        i = find_directive(lines, "reverse_proxy")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        body = [f"{indent}\t{ln}" for ln in proxy]
        if lines[i].endswith("{"):
            lines[i + 1:i + 1] = body
        else:
            lines[i:i + 1] = [lines[i] + " {", *body, f"{indent}}}"]
        return "\n".join(lines)

    return transform, "".join(o.global_options for o in opts)


@dataclass
class Endpoint:
    name: str
    host: str
    tls: bool
    auth: bool
    watch: dict[str, Callable[[], float]]
    """CPU counters (seconds) of the parties other than the client: front, registry, docker-proxy."""
    data_root: Path
    caddy: CaddyFront | None = None


# --- a fresh random image --------------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it on its way to `out` (if any)."""

    def __init__(self, out: IO[bytes] | io.RawIOBase | None = None) -> None:
        super().__init__()
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        if self.out is not None:
            self.out.write(b)
        return len(b)

    def tell(self) -> int:
        return self.size


class _Random(io.RawIOBase):
    """`size` bytes from os.urandom, read in whatever chunks the reader asks for."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


@dataclass(frozen=True)
class Layout:
    path: Path
    manifest: str
    blobs: tuple[str, ...]
    """every blob digest (layer, config, manifest) the push stores"""


def make_layout(dest: Path, size: int, tag: str) -> Layout:
    """An OCI layout holding one image: a gzip (stored, level 0) tar layer of `size` random bytes, its config and
    manifest. Level 0 keeps generation cheap; clients never recompress a layer that is already gzip. The layer is
    streamed to its file in 1 MiB pieces (a 1 GiB image never sits in memory)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = blobs / "layer.tmp"
    with open(tmp, "wb") as raw:
        gz_sink = _Sink(raw)
        with gzip.GzipFile(fileobj=gz_sink, mode="wb", compresslevel=0, mtime=0) as gz:
            tar_sink = _Sink(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=tar_sink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              copybufsize=1 << 20) as tar:
                info = tarfile.TarInfo("random.bin")
                info.size, info.mode, info.mtime = size, 0o644, 0
                tar.addfile(info, _Random(size))
    diff_id = "sha256:" + tar_sink.sha.hexdigest()
    layer_digest = gz_sink.sha.hexdigest()
    tmp.rename(blobs / layer_digest)

    def put(blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        (blobs / digest).write_bytes(blob)
        return "sha256:" + digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_digest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer_digest,
                    "size": gz_sink.size}],
    }).encode()
    manifest_digest = put(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return Layout(dest, manifest_digest, (f"sha256:{layer_digest}", config_digest, manifest_digest))


def purge(data_root: Path, repository_top: str, digests: Sequence[str]) -> None:
    """Delete what a round pushed from a registry's filesystem storage (untimed, between rounds): the repositories
    under `repository_top` and the blobs by digest. Digests are never pushed twice (every layer is fresh random
    data), so the registry's in-memory descriptor cache never answers for a deleted blob."""
    v2 = data_root / "docker" / "registry" / "v2"
    shutil.rmtree(v2 / "repositories" / repository_top, ignore_errors=True)
    for d in digests:
        hexd = d.split(":", 1)[1]
        shutil.rmtree(v2 / "blobs" / "sha256" / hexd[:2] / hexd, ignore_errors=True)


# --- measured commands -----------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)


def measured(argvs: Sequence[list[str]], watch: dict[str, Callable[[], float]], env: dict[str, str] | None = None,
             timeout: float = 900) -> Sample:
    """Wall time until every one of `argvs` (started together) has finished, plus the CPU seconds they (client)
    and each watched process spent meanwhile."""
    before = {k: f() for k, f in watch.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(  # noqa: S603 - argv is built by the benchmark
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        for argv in argvs]
    errors = []
    for argv, proc in zip(argvs, procs, strict=True):
        try:
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.communicate()
            raise
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)} failed ({proc.returncode}): {err[-3000:]}")
    wall = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if errors:
        raise RuntimeError("\n".join(errors))
    cpu = {"client": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}
    cpu.update({k: f() - before[k] for k, f in watch.items()})
    return Sample(wall=wall, cpu=cpu)


# --- clients ---------------------------------------------------------------------------------------------------


class Skopeo:
    name = "skopeo"
    env: dict[str, str] | None = None

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

    def watch(self) -> dict[str, Callable[[], float]]:
        return {}

    def prepare_push(self, ep: Endpoint, layout: Path, ref: str) -> None:
        pass

    def push_argv(self, ep: Endpoint, layout: Path, ref: str) -> list[str]:
        return ["skopeo", "copy", "--quiet", *self._opts(ep, "dest"), f"oci:{layout}:bench", f"docker://{ep.host}/{ref}"]

    def after_push(self, ep: Endpoint, ref: str) -> None:
        pass

    def _dest(self, ref: str) -> Path:
        return self.out / ref.replace("/", "_").replace(":", "_")

    def pull_argv(self, ep: Endpoint, ref: str) -> list[str]:
        return ["skopeo", "copy", "--quiet", *self._opts(ep, "src"), f"docker://{ep.host}/{ref}", f"dir:{self._dest(ref)}"]

    def dispose(self, ep: Endpoint, ref: str) -> None:
        shutil.rmtree(self._dest(ref), ignore_errors=True)

    def push(self, ep: Endpoint, layout: Path, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        return measured([self.push_argv(ep, layout, ref)], watch)

    def pull(self, ep: Endpoint, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        try:
            return measured([self.pull_argv(ep, ref)], watch)
        finally:
            self.dispose(ep, ref)


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
            if not ep.auth and not ep.tls:
                continue
            if ep.tls:
                # The daemon trusts a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt; removed on exit.
                for d in (certs_d, certs_d / ep.host):
                    if not d.exists():
                        d.mkdir()
                        self.made_dirs.append(d)
                (certs_d / ep.host / "ca.crt").write_bytes(self.ca.ca.read_bytes())
            if ep.auth:  # plain HTTP on loopback is fine: dockerd treats 127.0.0.0/8 as an insecure registry
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

    def prepare_push(self, ep: Endpoint, layout: Path, ref: str) -> None:
        full = f"{ep.host}/{ref}"
        self.images.add(full)
        run(["skopeo", "copy", "--quiet", f"oci:{layout}:bench", f"docker-daemon:{full}"], timeout=600)

    def push_argv(self, ep: Endpoint, layout: Path, ref: str) -> list[str]:
        return ["docker", "push", "--quiet", f"{ep.host}/{ref}"]

    def after_push(self, ep: Endpoint, ref: str) -> None:
        run(["docker", "rmi", f"{ep.host}/{ref}"], env=self.env, timeout=120)

    def pull_argv(self, ep: Endpoint, ref: str) -> list[str]:
        return ["docker", "pull", "--quiet", f"{ep.host}/{ref}"]

    def dispose(self, ep: Endpoint, ref: str) -> None:
        run(["docker", "rmi", f"{ep.host}/{ref}"], env=self.env, timeout=120, check=False)
        self.images.discard(f"{ep.host}/{ref}")

    def push(self, ep: Endpoint, layout: Path, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        self.prepare_push(ep, layout, ref)
        sample = measured([self.push_argv(ep, layout, ref)], {**watch, **self.watch()}, env=self.env)
        self.after_push(ep, ref)
        return sample

    def pull(self, ep: Endpoint, ref: str, watch: dict[str, Callable[[], float]]) -> Sample:
        return measured([self.pull_argv(ep, ref)], {**watch, **self.watch()}, env=self.env)


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
