"""The servers the benchmarks compare: the Distribution registry on loopback, the program's GENERATED Caddy site
(from renderers.caddyfile.render_caddyfile, with its ACME `tls` line swapped for a local certificate), and the nginx
front from Distribution's documentation (https://distribution.github.io/distribution/recipes/nginx/).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from bench._common import CADDY, LOOPBACK, Processes, TestCA, free_port, port_is_free, run, wait_port
from renderers.caddyfile import UPSTREAM_SLOTS, SiteSpec, render_caddyfile
from renderers.registry_env import render_registry_env

PUSH_USER = "robot_user"
PULL_USER = "k3s_pull"
BCRYPT_COST = 10
"""pulumi-random's RandomPassword.bcrypt_hash uses cost 10 (golang.org/x/crypto/bcrypt.DefaultCost)."""


@dataclass(frozen=True)
class Credentials:
    push_password: str
    push_hash: str
    pull_password: str
    pull_hash: str

    @staticmethod
    def generate(cost: int = BCRYPT_COST) -> Credentials:
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        push, pull = ("".join(secrets.choice(alphabet) for _ in range(32)) for _ in range(2))
        return Credentials(
            push_password=push,
            push_hash=bcrypt.hashpw(push.encode(), bcrypt.gensalt(cost, prefix=b"2a")).decode(),
            pull_password=pull,
            pull_hash=bcrypt.hashpw(pull.encode(), bcrypt.gensalt(cost, prefix=b"2a")).decode(),
        )


# --- registry --------------------------------------------------------------------------------------------------

# The registry:2 image's own /etc/docker/registry/config.yml, listening on loopback only.
REGISTRY_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def start_registry(procs: Processes, work: Path, port: int = 5000) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's docker-registry (Distribution 2.8) with the program's env file settings; returns (process, port)."""
    if not port_is_free(port):
        port = free_port()
    root = work / "registry-data"
    root.mkdir(parents=True, exist_ok=True)
    config = work / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(root=root, addr=f"{LOOPBACK}:{port}"))
    env_lines = render_registry_env(secrets.token_hex(24), container_root=str(root)).splitlines()
    env = dict(line.split("=", 1) for line in env_lines)
    proc = procs.start("registry", ["docker-registry", "serve", str(config)], work / "registry.log", env=env)
    wait_port(port, proc, what="registry")
    return proc, port


# --- the generated Caddy site ----------------------------------------------------------------------------------

_TLS_RE = re.compile(r"^(\t+)tls [^\n]*\{\n(?:\1\t[^\n]*\n)*\1\}\n|^(\t+)tls [^\n]*\n", re.MULTILINE)


def generated_site(address: str, upstream: str, creds: Credentials, allowlist: tuple[str, ...] = ()) -> str:
    """render_caddyfile's output for this site address, unchanged; its upstream slot files (in a folder of the
    benchmark's own) all name `upstream`, as on a host with one replica."""
    import tempfile

    slots = Path(tempfile.mkdtemp(prefix="bench-upstreams-"))
    for i in range(1, UPSTREAM_SLOTS + 1):
        (slots / str(i)).write_text(upstream)
    return render_caddyfile(SiteSpec(
        domain=address, acme_email="bench@example.com", upstream_dir=str(slots),
        push_user=PUSH_USER, push_hash=creds.push_hash, pull_user=PULL_USER, pull_hash=creds.pull_hash,
        allowlist=allowlist,
    ))


def with_local_cert(site: str, ca: TestCA) -> str:
    """Swap the ACME `tls <email>` line (or block) for the bench certificate; nothing else changes."""
    out, count = _TLS_RE.subn(lambda m: f"{m.group(1) or m.group(2)}tls {ca.cert} {ca.key}\n", site, count=1)
    if count != 1:
        raise ValueError("the generated site has no `tls` line to replace")
    return out


def block_end(lines: list[str], start: int) -> int:
    """Index of the line closing the block opened on lines[start] (Caddyfile braces; no braces in strings here)."""
    depth = 0
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        if depth == 0:
            return i
    raise ValueError(f"unclosed block at line {start + 1}")


def find_directive(lines: list[str], name: str) -> int:
    """Index of the one line holding directive `name`, at any nesting depth."""
    idx = [i for i, ln in enumerate(lines) if ln.strip().split(" ", 1)[0] == name]
    if len(idx) != 1:
        raise ValueError(f"expected exactly one `{name}` in the generated site, found {len(idx)}")
    return idx[0]


def drop_auth(site: str) -> str:
    """Diagnostic: the site without its `basic_auth { ... }` block (never deploy this)."""
    lines = site.split("\n")
    start = find_directive(lines, "basic_auth")
    return "\n".join(lines[:start] + lines[block_end(lines, start) + 1:])


def auth_before_allowlist(caddyfile: Path) -> bool:
    """Whether, in the adapted JSON config, the basic_auth handler runs before the allowlist's 403."""
    adapted = run([str(CADDY), "adapt", "--adapter", "caddyfile", "--config", str(caddyfile)], timeout=60).stdout
    auth_at, refuse_at = adapted.find('"handler":"authentication"'), adapted.find('"remote_ip"')
    return 0 <= auth_at < refuse_at


def allowlist_first(site: str) -> str:
    """A fix for a site whose allowlist runs after basic_auth: in the Caddyfile's directive order `route` (which
    held basic_auth) sorts before `respond`, so an outsider's credentials were bcrypt-checked first (and a right
    password answered 403 instead of 401). `handle` sorts before `route`, so the 403 comes first."""
    lines = site.split("\n")
    i = next((i for i, ln in enumerate(lines) if ln.strip() == 'respond @outside "forbidden" 403'), None)
    if i is None:
        raise ValueError("the generated site has no allowlist respond line")
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i:i + 1] = [f"{indent}handle @outside {{", f'{indent}\trespond "forbidden" 403', f"{indent}}}"]
    return "\n".join(lines)


def without_unknown_user_guard(site: str) -> str:
    """The generated site minus its unknown-user guard (the site as it was before the guard): basic_auth then checks
    an unknown user's password against Caddy's built-in cost-14 bcrypt hash."""
    lines = site.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == "@unknown_user {")
    end = next(i for i, line in enumerate(lines) if line.strip() == "respond @unknown_user 401")
    del lines[start : end + 1]
    if "@unknown_user" in "\n".join(lines):
        raise RuntimeError("the generated site holds more than one unknown-user guard")
    return "\n".join(lines)


def caddy_global(admin_port: int, storage: Path, http_port: int, extra: str = "") -> str:
    """Global options a test copy of Caddy needs: its own admin address and storage, no port 80."""
    return (
        "{\n"
        f"\tadmin {LOOPBACK}:{admin_port}\n"
        f"\tstorage file_system {storage}\n"
        f"\thttp_port {http_port}\n"
        "\tauto_https disable_redirects\n"
        "\tskip_install_trust\n"
        f"{extra}"
        "}\n\n"
    )


@dataclass
class CaddyFront:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    caddyfile: Path

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"


def start_caddy(procs: Processes, work: Path, name: str, upstream: str, creds: Credentials, ca: TestCA,
                transform: Callable[[str], str] = lambda s: s, global_extra: str = "",
                allowlist: tuple[str, ...] = (), validate: bool = True) -> CaddyFront:
    """Run the generated site (optionally transformed, for a measured variant) under its own Caddy."""
    port, admin_port, http_port = free_port(), free_port(), free_port()
    site = transform(with_local_cert(generated_site(f"localhost:{port}", upstream, creds, allowlist), ca))
    caddyfile = work / f"{name}.Caddyfile"
    storage = work / f"{name}-storage"
    caddyfile.write_text(caddy_global(admin_port, storage, http_port, global_extra) + site)
    if validate:
        run([str(CADDY), "validate", "--adapter", "caddyfile", "--config", str(caddyfile)], timeout=60)
    proc = procs.start(name, [str(CADDY), "run", "--adapter", "caddyfile", "--config", str(caddyfile)],
                       work / f"{name}.log", env={"HOME": str(work), "XDG_DATA_HOME": str(storage),
                                                  "XDG_CONFIG_HOME": str(work / f"{name}-config")})
    wait_port(port, proc, what=name)
    wait_port(admin_port, proc, what=f"{name} admin")
    return CaddyFront(proc=proc, port=port, admin_port=admin_port, caddyfile=caddyfile)


# --- nginx, as Distribution's documentation configures it ------------------------------------------------------

NGINX_DOC = Path(__file__).with_name("nginx-doc.conf")
"""The recipe's auth/nginx.conf, adapted only in paths and the listen address; a few lines a private nginx copy needs
(daemon off, pid and temp paths, logs) are marked "bench:". `{name}` marks a value start_nginx fills in."""


def fill(template: str, **values: object) -> str:
    """`template` with each `{key}` replaced by its value (nginx's own braces never enclose a bare word)."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]), template)


# What a tuned nginx front adds: stream request and response bodies instead of spooling them to disk, and
# keep-alive HTTP/1.1 to the registry. The htpasswd file stays bcrypt at the same cost (nginx has no hash cache,
# so every request still pays one bcrypt).
NGINX_TUNED_LOCATION = """\
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
"""
NGINX_TUNED_UPSTREAM = "    keepalive 16;\n"


@dataclass
class NginxFront:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"


NGINX_DOC_COST = 5
"""The recipe makes its file with `htpasswd -Bbn user password`: bcrypt at htpasswd's default cost, 5."""


def write_htpasswd(path: Path, creds: Credentials, cost: int = NGINX_DOC_COST) -> None:
    """`htpasswd -B` as the recipe says (cost 5 unless told; the program's own hashes are cost 10)."""
    lines = []
    for user, password in ((PUSH_USER, creds.push_password), (PULL_USER, creds.pull_password)):
        lines.append(run(["htpasswd", "-B", "-C", str(cost), "-b", "-n", user, password]).stdout.strip())
    path.write_text("\n".join(lines) + "\n")


def start_nginx(procs: Processes, work: Path, name: str, upstream: str, creds: Credentials, ca: TestCA,
                tuned: bool = False, cost: int = NGINX_DOC_COST) -> NginxFront:
    port = free_port()
    htpasswd = work / f"{name}.htpasswd"
    write_htpasswd(htpasswd, creds, cost)
    for sub in ("body", "proxy"):
        (work / f"{name}-{sub}").mkdir(exist_ok=True)
    conf = work / f"{name}.conf"
    conf.write_text(fill(
        NGINX_DOC.read_text(),
        work=work, name=name, upstream=upstream, listen=f"{LOOPBACK}:{port}", cert=ca.cert, key=ca.key,
        htpasswd=htpasswd, location_extra=NGINX_TUNED_LOCATION if tuned else "",
        upstream_extra=NGINX_TUNED_UPSTREAM if tuned else "",
    ))
    run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(work)], timeout=60)
    proc = procs.start(name, ["nginx", "-c", str(conf), "-p", str(work)], work / f"{name}.log")
    wait_port(port, proc, what=name)
    return NginxFront(proc=proc, port=port)
