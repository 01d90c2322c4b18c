"""What bench.proxy compares: the Caddy site options, where the registry runs and how Caddy reaches it, and the
variants made of them."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    TestCA,
    free_port,
    run,
)
from bench._fronts import (
    BCRYPT_COST,
    NGINX_DOC_COST,
    CaddyFront,
    block_end,
    drop_auth,
    find_directive,
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
