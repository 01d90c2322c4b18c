"""renderers/caddyfile.py: the site's exact text, then checked (`caddy validate`, adapted JSON) and served by a real Caddy."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from renderers.caddyfile import (
    UPSTREAM_DIR,
    UPSTREAM_SLOTS,
    SiteSpec,
    basic_prefix_regexp,
    maintenance_error,
    render_caddyfile,
)
from renderers.dockerconfigjson import basic_auth_value
from tests.unit.support import DOMAIN, PULL_PASSWORD, PULL_USER, free_port, tool

PUSH_USER, PUSH_PASSWORD = "robot_user", "PushPassw0rdForUnitTestsOnly0001"


API_HEADER = "Docker-Distribution-Api-Version"


def _bcrypt(password: str) -> str:
    # Same shape as RandomPassword.bcrypt_hash (Go's bcrypt: $2a$, cost 10).
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()


PUSH_HASH, PULL_HASH = _bcrypt(PUSH_PASSWORD), _bcrypt(PULL_PASSWORD)


def spec(**overrides: Any) -> SiteSpec:
    values: dict[str, Any] = {
        "domain": DOMAIN,
        "acme_email": "ops@example.com",
        "push_user": PUSH_USER,
        "push_hash": PUSH_HASH,
        "pull_user": PULL_USER,
        "pull_hash": PULL_HASH,
    }
    values.update(overrides)
    return SiteSpec(**values)


def _site_text(tls: list[str], allow: list[str]) -> str:
    """The whole site with its tls and allowlist lines supplied by the case."""
    body = [
        *allow,
        "\troute /v2* {",
        "\t\t@unknown_user {",
        "\t\t\theader Authorization *",
        f'\t\t\tnot header_regexp Authorization "^(?i:basic) ({basic_prefix_regexp(PUSH_USER)}|{basic_prefix_regexp(PULL_USER)})"',
        "\t\t}",
        '\t\theader @unknown_user WWW-Authenticate "Basic realm=\\"restricted\\""',
        "\t\trespond @unknown_user 401",
        "\t\tbasic_auth {",
        f"\t\t\t{PUSH_USER} {PUSH_HASH}",
        f"\t\t\t{PULL_USER} {PULL_HASH}",
        "\t\t}",
        "\t\t@pull_write {",
        f"\t\t\tvars {{http.auth.user.id}} {PULL_USER}",
        "\t\t\tnot method GET HEAD",
        "\t\t}",
        '\t\trespond @pull_write "pull-only credential: read access only" 403',
        "\t\t@maintenance {",
        "\t\t\tnot method GET HEAD",
        "\t\t\tfile {",
        "\t\t\t\troot /run/registry",
        "\t\t\t\ttry_files /read-only",
        "\t\t\t}",
        "\t\t}",
        '\t\theader @maintenance Content-Type "application/json; charset=utf-8"',
        "\t\theader @maintenance Retry-After 120",
        f"\t\trespond @maintenance `{maintenance_error()}` 503",
        "\t}",
        "\tvars {",
        *(f"\t\tregistry_upstream_{i} {{file./var/lib/registry-upstreams/{i}}}" for i in range(1, 9)),
        "\t}",
        "\treverse_proxy " + " ".join(f"{{vars.registry_upstream_{i}}}" for i in range(1, 9)) + " {",
        "\t\theader_down -Docker-Distribution-Api-Version",
        "\t\tlb_policy round_robin",
        "\t\tlb_try_duration 30s",
        "\t\tlb_try_interval 250ms",
        "\t\tlb_retry_match {",
        "\t\t\tmethod GET HEAD",
        "\t\t}",
        "\t\tfail_duration 2s",
        "\t}",
    ]
    return "\n".join(
        [
            "# Managed by the registry Pulumi program; edits are overwritten.",
            f"{DOMAIN} {{",
            *tls,
            "\tencode zstd gzip",
            "\theader Docker-Distribution-Api-Version registry/2.0",
            "\troute {",
            *("\t" + line for line in body),
            "\t}",
            "}",
            "",
        ]
    )


CADDYFILE_CASES = {
    "defaults: tls email only, no allowlist": ({}, ["\ttls ops@example.com"], []),
    "ca only": (
        {"acme_ca_url": "https://acme-staging-v02.api.letsencrypt.org/directory"},
        ["\ttls ops@example.com {", "\t\tca https://acme-staging-v02.api.letsencrypt.org/directory", "\t}"],
        [],
    ),
    "ca_root only": (
        {"acme_ca_root": "/etc/caddy/test-ca.pem"},
        ["\ttls ops@example.com {", "\t\tca_root /etc/caddy/test-ca.pem", "\t}"],
        [],
    ),
    "ca and ca_root": (
        {"acme_ca_url": "https://ca.test:14000/dir", "acme_ca_root": "/etc/caddy/test-ca.pem"},
        ["\ttls ops@example.com {", "\t\tca https://ca.test:14000/dir", "\t\tca_root /etc/caddy/test-ca.pem", "\t}"],
        [],
    ),
    "allowlist": (
        {"allowlist": ("198.51.100.0/24", "2001:db8::/32")},
        ["\ttls ops@example.com"],
        ["\t@outside not remote_ip 198.51.100.0/24 2001:db8::/32", '\trespond @outside "forbidden" 403'],
    ),
    "email needing quotes": ({"acme_email": "o'neil+ops@example.com"}, ['\ttls "o\'neil+ops@example.com"'], []),
}


@pytest.mark.parametrize(("overrides", "tls", "allow"), CADDYFILE_CASES.values(), ids=CADDYFILE_CASES.keys())
def test_caddyfile_is_exactly_the_expected_site(overrides: dict[str, Any], tls: list[str], allow: list[str]) -> None:
    assert render_caddyfile(spec(**overrides)) == _site_text(tls, allow)


def test_caddyfile_omits_tls_options_and_allowlist_when_unset() -> None:
    text = render_caddyfile(spec())
    for absent in ("\t\tca ", "ca_root", "remote_ip", "@outside", "{\n\t\tca"):
        assert absent not in text


def test_caddyfile_reads_the_replicas_from_the_upstream_slots() -> None:
    lines = render_caddyfile(spec(upstream_dir="/srv/slots")).splitlines()
    proxy = [line for line in lines if "reverse_proxy" in line]
    assert proxy == ["\t\treverse_proxy " + " ".join(f"{{vars.registry_upstream_{i}}}" for i in range(1, 9)) + " {"]
    assert [line.strip() for line in lines if "{file." in line] == [
        f"registry_upstream_{i} {{file./srv/slots/{i}}}" for i in range(1, 9)
    ]
    assert UPSTREAM_DIR == "/var/lib/registry-upstreams" and UPSTREAM_SLOTS == 8


def test_maintenance_error_is_a_registry_error_body() -> None:
    body = json.loads(maintenance_error())
    assert [e["code"] for e in body["errors"]] == ["UNAVAILABLE"]
    assert "read-only for maintenance" in body["errors"][0]["message"]
    assert "`" not in maintenance_error()  # it sits inside a backquoted Caddyfile token


def caddy_env(home: Path) -> dict[str, str]:
    """Keep Caddy's data and autosaved config inside the test's folder."""
    return {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PATH": "/usr/bin:/bin",
    }


def caddy(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("caddy"), *args], capture_output=True, text=True, env=caddy_env(home), timeout=60, check=False
    )


def make_root_pem(folder: Path) -> Path:
    """A throwaway self-signed CA certificate (what acmeCaRoot points at for a test ACME server)."""
    pem, key = folder / "test-root.pem", folder / "test-root.key"
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(pem), "-days", "1", "-subj", "/CN=unit-test-root"],
            check=True, capture_output=True,
        )
    else:  # cryptography comes with paramiko (requirements-dev.txt)
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit-test-root")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(private, hashes.SHA256())
        )
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert pem.read_text().startswith("-----BEGIN CERTIFICATE-----")
    return pem


@pytest.fixture(scope="module")
def caddy_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("caddy-home")


@pytest.fixture(scope="module")
def full_site(caddy_home: Path) -> tuple[str, Path]:
    """A site with every option set: allowlist, test ACME CA and its root (an existing PEM), odd email."""
    root = make_root_pem(caddy_home)
    text = render_caddyfile(
        spec(
            acme_email="o'neil+ops@example.com",
            allowlist=("198.51.100.0/24", "2001:db8::/32"),
            acme_ca_url="https://ca.test:14000/dir",
            acme_ca_root=str(root),
        )
    )
    return text, root


def _validate(home: Path, text: str, name: str) -> subprocess.CompletedProcess[str]:
    path = home / name
    path.write_text(text)
    return caddy(home, "validate", "--adapter", "caddyfile", "--config", str(path))


def test_caddy_validates_the_default_site(caddy_home: Path) -> None:
    result = _validate(caddy_home, render_caddyfile(spec()), "default.caddy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Valid configuration" in result.stdout + result.stderr


def test_caddy_validates_the_site_with_every_option(caddy_home: Path, full_site: tuple[str, Path]) -> None:
    result = _validate(caddy_home, full_site[0], "full.caddy")
    assert result.returncode == 0, result.stderr[-3000:]


def test_caddy_validate_really_loads_ca_root(caddy_home: Path) -> None:
    # Shows the validation above is meaningful: a ca_root that does not exist is refused.
    missing = str(caddy_home / "no-such-root.pem")
    result = _validate(caddy_home, render_caddyfile(spec(acme_ca_root=missing)), "missing-root.caddy")
    assert result.returncode != 0
    assert "no-such-root.pem" in result.stderr


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


@pytest.fixture(scope="module")
def adapted(caddy_home: Path, full_site: tuple[str, Path]) -> dict[str, Any]:
    path = caddy_home / "adapt.caddy"
    path.write_text(full_site[0])
    result = caddy(caddy_home, "adapt", "--adapter", "caddyfile", "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _v2_route(config: dict[str, Any]) -> dict[str, Any]:
    routes = [d for d in _dicts(config) if d.get("match") == [{"path": ["/v2*"]}]]
    assert len(routes) == 1, routes
    return routes[0]


def test_adapted_v2_route_authenticates_both_accounts_with_bcrypt(adapted: dict[str, Any]) -> None:
    auth = [d for d in _dicts(_v2_route(adapted)) if d.get("handler") == "authentication"]
    assert len(auth) == 1
    basic = auth[0]["providers"]["http_basic"]
    assert basic["hash"] == {"algorithm": "bcrypt"}
    assert basic["accounts"] == [
        {"username": PUSH_USER, "password": PUSH_HASH},
        {"username": PULL_USER, "password": PULL_HASH},
    ]


def test_adapted_v2_route_refuses_pull_user_writes_after_authentication(adapted: dict[str, Any]) -> None:
    subroutes = [d for d in _dicts(_v2_route(adapted)) if d.get("handler") == "subroute"]
    assert len(subroutes) == 1
    routes = subroutes[0]["routes"]
    auth = [i for i, r in enumerate(routes) if [h["handler"] for h in r["handle"]] == ["authentication"]]
    assert len(auth) == 1
    pull_write = [{"vars": {"{http.auth.user.id}": [PULL_USER]}, "not": [{"method": ["GET", "HEAD"]}]}]
    refusals = [i for i, r in enumerate(routes) if r.get("match") == pull_write]
    assert len(refusals) == 1 and refusals[0] > auth[0]
    assert routes[refusals[0]]["handle"] == [
        {"handler": "static_response", "status_code": 403, "body": "pull-only credential: read access only"}
    ]


def test_adapted_site_sets_api_version_header_and_drops_the_registry_copy(adapted: dict[str, Any]) -> None:
    headers = [d for d in _dicts(adapted) if d.get("handler") == "headers" and API_HEADER in json.dumps(d)]
    assert headers == [{"handler": "headers", "response": {"set": {API_HEADER: ["registry/2.0"]}}}]
    proxies = [d for d in _dicts(adapted) if d.get("handler") == "reverse_proxy"]
    assert [p["headers"]["response"]["delete"] for p in proxies] == [[API_HEADER]]


def test_adapted_site_refuses_addresses_outside_the_allowlist(adapted: dict[str, Any]) -> None:
    outside = [
        d for d in _dicts(adapted)
        if d.get("match") == [{"not": [{"remote_ip": {"ranges": ["198.51.100.0/24", "2001:db8::/32"]}}]}]
    ]
    assert len(outside) == 1
    assert outside[0]["handle"] == [{"handler": "static_response", "status_code": 403, "body": "forbidden"}]


def test_adapted_site_uses_the_test_acme_ca_and_its_root(adapted: dict[str, Any], full_site: tuple[str, Path]) -> None:
    policies = adapted["apps"]["tls"]["automation"]["policies"]
    assert policies == [
        {
            "subjects": [DOMAIN],
            "issuers": [
                {
                    "module": "acme",
                    "ca": "https://ca.test:14000/dir",
                    "email": "o'neil+ops@example.com",
                    "trusted_roots_pem_files": [str(full_site[1])],
                }
            ],
        }
    ]


def test_adapted_site_proxies_to_the_upstream_slots(adapted: dict[str, Any]) -> None:
    # Each slot is a placeholder Caddy fills per request from its file (no port of its own: none is added).
    proxies = [d for d in _dicts(adapted) if d.get("handler") == "reverse_proxy"]
    assert [p["upstreams"] for p in proxies] == [[{"dial": f"{{http.vars.registry_upstream_{i}}}"} for i in range(1, 9)]]
    slots = [d for d in _dicts(adapted) if d.get("handler") == "vars"]
    assert slots == [{"handler": "vars", **{f"registry_upstream_{i}": f"{{file.{UPSTREAM_DIR}/{i}}}" for i in range(1, 9)}}]


def plain_http_site(rendered: str, address: str, flag_dir: Path, routes: int = 1) -> str:
    """The rendered site served on a plain-http loopback address: site line swapped, tls line or block dropped,
    the maintenance flag looked for in `flag_dir` instead of /run/registry (in each of `routes` routes)."""
    lines, out, in_tls = rendered.splitlines(), [], False
    assert lines.count(f"{DOMAIN} {{") == 1, rendered
    assert lines.count("\t\t\t\t\troot /run/registry") == routes, rendered
    for line in lines:
        if line == f"{DOMAIN} {{":
            out.append(f"{address} {{")
        elif line == "\t\t\t\t\troot /run/registry":
            out.append(f"\t\t\t\t\troot {flag_dir}")
        elif line.startswith("\ttls "):
            in_tls = line.endswith("{")
        elif in_tls:
            in_tls = line != "\t}"
        else:
            out.append(line)
    text = "\n".join(out) + "\n"
    assert "tls" not in text and address in text
    return text


@dataclass
class Upstream:
    """A stand-in registry on loopback: answers 200 to every method and records what reached it."""

    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> int:
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen.append((self.command, self.path, self.rfile.read(length) if length else b""))
                body = b'{"upstream": true}'
                self.send_response(200)
                if not self.path.endswith("/no-header"):
                    self.send_header(API_HEADER, "registry/2.0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port: int = self.server.server_address[1]
        return port

    def reached(self, method: str, path: str) -> bool:
        return any(m == method and p == path for m, p, _ in self.seen)

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def write_slots(folder: Path, *addresses: str) -> Path:
    """The upstream slot files as the container step writes them: the replicas' addresses in turn."""
    folder.mkdir(exist_ok=True)
    for i in range(UPSTREAM_SLOTS):
        (folder / f"{i + 1}.new").write_text(addresses[i % len(addresses)] + "\n")
        (folder / f"{i + 1}.new").replace(folder / str(i + 1))
    return folder


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def call(port: int, method: str, path: str, auth: tuple[str, str] | None = None, body: bytes | None = None) -> Response:
    headers = {"Authorization": f"Basic {basic_auth_value(*auth)}"} if auth else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@dataclass
class LiveCaddy:
    upstream: Upstream
    open: int
    """Site without allowlist."""
    inside: int
    """Site whose allowlist includes loopback."""
    outside: int
    """Site whose allowlist excludes loopback."""
    flag: Path
    """The maintenance flag file (absent unless a test creates it)."""


def _start_caddy(home: Path, site: str, admin: int, port: int) -> subprocess.Popen[bytes]:
    """A real Caddy serving `site` with its own admin address and storage under `home`, once it listens."""
    config = home / "Caddyfile"
    config.write_text(f"{{\n\tadmin 127.0.0.1:{admin}\n\tstorage file_system {home / 'storage'}\n}}\n\n{site}")
    log = home / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [tool("caddy"), "run", "--adapter", "caddyfile", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=caddy_env(home),
        )
    _wait_listening(proc, [admin, port], log)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a Caddy this module started: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + 20
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            pytest.fail(f"caddy exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"caddy did not listen on {pending} within 20 s:\n{log.read_text()[-4000:]}")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCaddy]:
    home = tmp_path_factory.mktemp("caddy-live")
    upstream = Upstream()
    upstream_port = upstream.start()
    admin, open_, inside, outside = (free_port() for _ in range(4))
    flag_dir = home / "run"
    flag_dir.mkdir()
    slots = write_slots(home / "upstreams", f"127.0.0.1:{upstream_port}")
    sites = [
        plain_http_site(
            render_caddyfile(spec(upstream_dir=str(slots), allowlist=allow)),
            f"http://127.0.0.1:{port}",
            flag_dir,
        )
        for port, allow in ((open_, ()), (inside, ("127.0.0.0/8", "::1/128")), (outside, ("192.0.2.0/24",)))
    ]
    config = home / "Caddyfile"
    config.write_text(f"{{\n\tadmin 127.0.0.1:{admin}\n\tstorage file_system {home / 'storage'}\n}}\n\n" + "\n".join(sites))
    log = home / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [tool("caddy"), "run", "--adapter", "caddyfile", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=caddy_env(home),
        )
    try:
        _wait_listening(proc, [admin, open_, inside, outside], log)
        yield LiveCaddy(upstream, open_, inside, outside, flag_dir / "read-only")
    finally:
        _stop(proc)
        upstream.stop()


PUSH, PULL = (PUSH_USER, PUSH_PASSWORD), (PULL_USER, PULL_PASSWORD)


def _path() -> str:
    return f"/v2/demo/blobs/uploads/{uuid.uuid4().hex}"


def test_anonymous_request_gets_basic_challenge_without_reaching_registry(live: LiveCaddy) -> None:
    path = _path()
    resp = call(live.open, "GET", path)
    assert resp.status == 401
    assert (resp.headers.get("WWW-Authenticate") or "").startswith("Basic ")
    assert not live.upstream.reached("GET", path)


def test_anonymous_v2_challenge_carries_docker_distribution_api_version(live: LiveCaddy) -> None:
    # The renderer's own comment promises this: Caddy's 401 lacks the header unless the site adds it.
    resp = call(live.open, "GET", "/v2/")
    assert resp.status == 401
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]


@pytest.mark.parametrize(
    "auth",
    [(PUSH_USER, "wrong-password"), (PULL_USER, PUSH_PASSWORD), ("intruder", PUSH_PASSWORD), ("", "")],
    ids=["push-wrong-password", "pull-with-push-password", "unknown-user", "empty"],
)
def test_wrong_credentials_get_401(live: LiveCaddy, auth: tuple[str, str]) -> None:
    path = _path()
    assert call(live.open, "GET", path, auth=auth).status == 401
    assert not live.upstream.reached("GET", path)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
def test_push_user_is_proxied_for_every_method(live: LiveCaddy, method: str) -> None:
    path = _path()
    body = b"layer-bytes" if method in ("PUT", "POST", "PATCH") else None
    resp = call(live.open, method, path, auth=PUSH, body=body)
    assert resp.status == 200
    assert live.upstream.reached(method, path)
    if body:
        assert (method, path, body) in live.upstream.seen


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_pull_user_can_read(live: LiveCaddy, method: str) -> None:
    path = _path()
    assert call(live.open, method, path, auth=PULL).status == 200
    assert live.upstream.reached(method, path)


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_pull_user_writes_are_refused_before_the_registry(live: LiveCaddy, method: str) -> None:
    path = _path()
    resp = call(live.open, method, path, auth=PULL, body=b"x" if method != "DELETE" else None)
    assert resp.status == 403
    assert b"read access only" in resp.body
    assert not live.upstream.reached(method, path)


def test_proxied_response_has_api_version_header_exactly_once(live: LiveCaddy) -> None:
    resp = call(live.open, "GET", "/v2/", auth=PULL)
    assert resp.status == 200 and b"upstream" in resp.body
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]


def test_proxied_response_without_upstream_header_gets_it_from_caddy(live: LiveCaddy) -> None:
    resp = call(live.open, "GET", "/v2/demo/no-header", auth=PULL)
    assert resp.status == 200
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]


@pytest.mark.parametrize("path", ["//v2/_catalog", "/x/../v2/_catalog", "/V2/_catalog", "/%76%32/_catalog"])
def test_path_variants_of_v2_still_need_credentials(live: LiveCaddy, path: str) -> None:
    assert call(live.open, "GET", path).status == 401


def test_allowlisted_client_is_served(live: LiveCaddy) -> None:
    path = _path()
    assert call(live.inside, "GET", path, auth=PULL).status == 200
    assert live.upstream.reached("GET", path)


def test_client_outside_allowlist_is_refused_even_with_valid_credentials(live: LiveCaddy) -> None:
    path = _path()
    resp = call(live.outside, "GET", path, auth=PUSH)
    assert resp.status == 403
    assert not live.upstream.reached("GET", path)


def test_client_outside_allowlist_is_refused_before_password_check(live: LiveCaddy) -> None:
    # Otherwise an outsider can still guess passwords: 401 for a wrong one, 403 for a right one.
    assert call(live.outside, "GET", "/v2/").status == 403
    assert call(live.outside, "GET", "/v2/", auth=(PUSH_USER, "guess")).status == 403


@pytest.fixture
def maintenance(live: LiveCaddy) -> Iterator[LiveCaddy]:
    live.flag.write_text("")
    try:
        yield live
    finally:
        live.flag.unlink()


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_writes_during_maintenance_get_503_with_retry_after(maintenance: LiveCaddy, method: str) -> None:
    path = _path()
    resp = call(maintenance.open, method, path, auth=PUSH, body=b"x" if method != "DELETE" else None)
    assert resp.status == 503
    assert resp.headers.get("Retry-After") == "120"
    assert resp.headers.get("Content-Type") == "application/json; charset=utf-8"
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]
    assert json.loads(resp.body) == json.loads(maintenance_error())
    assert not maintenance.upstream.reached(method, path)


def test_reads_during_maintenance_are_proxied(maintenance: LiveCaddy) -> None:
    path = _path()
    assert call(maintenance.open, "GET", path, auth=PULL).status == 200
    assert call(maintenance.open, "HEAD", path, auth=PUSH).status == 200
    assert maintenance.upstream.reached("GET", path) and maintenance.upstream.reached("HEAD", path)


def test_pull_user_write_during_maintenance_is_still_a_403(maintenance: LiveCaddy) -> None:
    assert call(maintenance.open, "PUT", _path(), auth=PULL, body=b"x").status == 403


def test_writes_resume_when_the_maintenance_flag_is_gone(live: LiveCaddy) -> None:
    assert not live.flag.exists()
    path = _path()
    assert call(live.open, "PUT", path, auth=PUSH, body=b"x").status == 200
    assert live.upstream.reached("PUT", path)


@pytest.mark.parametrize("user", ["robot_user", "k3s_pull", "a", "ab", "abc", "ci+bot@example.com"])
def test_basic_prefix_regexp_matches_every_password_of_its_user_and_no_other_user(user: str) -> None:
    pattern = re.compile(f"^(?i:basic) ({basic_prefix_regexp(user)})")
    passwords = [secrets.token_urlsafe(n) for n in range(1, 40)] + ["", "x" * 72, ":", "\u00e9t\u00e9"]
    for password in passwords:
        assert pattern.match("Basic " + basic_auth_value(user, password)), (user, password)
    for other in {user[:-1], user + "x", user.upper(), "x" + user, "nobody"} - {user}:
        for password in passwords:
            assert not pattern.match("Basic " + basic_auth_value(other, password)), (user, other, password)


def test_unknown_user_is_refused_before_basic_auth(adapted: dict[str, Any]) -> None:
    v2 = _v2_route(adapted)
    handlers = [d.get("handler") for d in _dicts(v2) if d.get("handler") in ("static_response", "authentication")]
    unknown = [d for d in _dicts(v2) if d.get("status_code") == 401]
    assert len(unknown) == 1
    assert handlers.index("static_response") < handlers.index("authentication")


def test_the_upstream_slots_move_between_replicas_at_the_next_request_without_a_reload(tmp_path: Path) -> None:
    # What a change of replicas does to Caddy: new slot files, read at every request; the loaded config stays.
    first, second = Upstream(), Upstream()
    first_port, second_port = first.start(), second.start()
    admin, port = free_port(), free_port()
    (tmp_path / "run").mkdir()
    slots = write_slots(tmp_path / "upstreams", f"127.0.0.1:{first_port}")
    site = plain_http_site(render_caddyfile(spec(upstream_dir=str(slots))), f"http://127.0.0.1:{port}", tmp_path / "run")
    proc = _start_caddy(tmp_path, site, admin, port)
    try:
        loaded = call(admin, "GET", "/config/").body

        def pulls(n: int) -> None:
            for _ in range(n):
                assert call(port, "GET", "/v2/demo/manifests/1", auth=PULL).status == 200

        pulls(4)
        assert len(second.seen) == 0 and len(first.seen) == 4
        write_slots(slots, f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}")  # a second replica answers
        pulls(8)
        assert len(first.seen) == 8 and len(second.seen) == 4  # round robin over the slots, half each
        write_slots(slots, f"127.0.0.1:{second_port}")  # the first is about to stop: no new request for it
        pulls(4)
        assert len(first.seen) == 8 and len(second.seen) == 8
        assert call(admin, "GET", "/config/").body == loaded
        assert b'"msg":"load complete"' not in (tmp_path / "caddy.log").read_bytes()  # no reload: nothing dropped a connection
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        first.stop()
        second.stop()


OLD_PUSH_PASSWORD, OLD_PULL_PASSWORD = "OldPushPassw0rdForUnitTestsOnly1", "OldPullPassw0rdForUnitTestsOnly2"


OLD_PUSH, OLD_PULL = (PUSH_USER, OLD_PUSH_PASSWORD), (PULL_USER, OLD_PULL_PASSWORD)


def handover_spec(**overrides: Any) -> SiteSpec:
    return spec(previous_push_hash=_bcrypt(OLD_PUSH_PASSWORD), previous_pull_hash=_bcrypt(OLD_PULL_PASSWORD), **overrides)


def test_site_without_previous_hashes_has_no_handover() -> None:
    assert "handle_errors" not in render_caddyfile(spec())
    assert render_caddyfile(spec(previous_push_hash="", previous_pull_hash="")) == render_caddyfile(spec())


def test_handover_site_adds_only_an_error_route_with_the_previous_hashes() -> None:
    spec_ = handover_spec()
    current, handover = render_caddyfile(spec()), render_caddyfile(spec_)
    head = current.rsplit("}\n", 1)[0]
    assert handover.startswith(head)  # the current site, unchanged, then the handover
    tail = handover[len(head):]
    assert tail.splitlines()[1] == "\thandle_errors 401 {"
    assert f"\t\t\t\t{PUSH_USER} {spec_.previous_push_hash}" in tail and PUSH_HASH not in tail
    assert f"\t\t\t\t{PULL_USER} {spec_.previous_pull_hash}" in tail and PULL_HASH not in tail


def test_handover_for_one_user_lists_only_that_user() -> None:
    text = render_caddyfile(spec(previous_pull_hash=_bcrypt(OLD_PULL_PASSWORD)))
    tail = text.split("handle_errors 401", 1)[1]
    assert f"\t{PULL_USER} $2a$" in tail and f"\t{PUSH_USER} $2a$" not in tail


def test_caddy_validates_the_handover_site(caddy_home: Path, full_site: tuple[str, Path]) -> None:
    text = render_caddyfile(handover_spec(allowlist=("198.51.100.0/24",), acme_ca_root=str(full_site[1])))
    result = _validate(caddy_home, text, "handover.caddy")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def handover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCaddy]:
    """A real Caddy serving the handover site (no allowlist) in front of the stand-in registry."""
    home = tmp_path_factory.mktemp("caddy-handover")
    upstream = Upstream()
    upstream_port = upstream.start()
    admin, port = free_port(), free_port()
    flag_dir = home / "run"
    flag_dir.mkdir()
    slots = write_slots(home / "upstreams", f"127.0.0.1:{upstream_port}")
    site = plain_http_site(
        render_caddyfile(handover_spec(upstream_dir=str(slots))), f"http://127.0.0.1:{port}", flag_dir, 2
    )
    proc = _start_caddy(home, site, admin, port)
    try:
        yield LiveCaddy(upstream, port, port, port, flag_dir / "read-only")
    finally:
        _stop(proc)
        upstream.stop()


@pytest.mark.parametrize("auth", [PUSH, PULL, OLD_PUSH, OLD_PULL], ids=["push", "pull", "old-push", "old-pull"])
def test_handover_accepts_both_generations_of_each_user(handover: LiveCaddy, auth: tuple[str, str]) -> None:
    path = _path()
    resp = call(handover.open, "GET", path, auth=auth)
    assert resp.status == 200
    assert handover.upstream.reached("GET", path)
    assert "WWW-Authenticate" not in resp.headers
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]


def test_handover_proxies_an_old_push_credential_with_its_body(handover: LiveCaddy) -> None:
    path = _path()
    assert call(handover.open, "PUT", path, auth=OLD_PUSH, body=b"layer-bytes").status == 200
    assert ("PUT", path, b"layer-bytes") in handover.upstream.seen


@pytest.mark.parametrize(
    "auth",
    [(PUSH_USER, "wrong-password"), (PUSH_USER, OLD_PULL_PASSWORD), (PULL_USER, OLD_PUSH_PASSWORD), ("intruder", OLD_PUSH_PASSWORD), None],
    ids=["wrong", "push-with-old-pull", "pull-with-old-push", "unknown-user", "anonymous"],
)
def test_handover_refuses_everything_else_with_a_basic_challenge(handover: LiveCaddy, auth: tuple[str, str] | None) -> None:
    path = _path()
    resp = call(handover.open, "GET", path, auth=auth)
    assert resp.status == 401
    assert (resp.headers.get("WWW-Authenticate") or "").startswith("Basic ")
    assert resp.headers.get_all(API_HEADER) == ["registry/2.0"]
    assert not handover.upstream.reached("GET", path)


def test_handover_keeps_the_old_pull_credential_read_only(handover: LiveCaddy) -> None:
    path = _path()
    assert call(handover.open, "PUT", path, auth=OLD_PULL, body=b"x").status == 403
    assert not handover.upstream.reached("PUT", path)


def test_handover_keeps_the_maintenance_answer_for_old_credentials(handover: LiveCaddy) -> None:
    handover.flag.write_text("")
    try:
        path = _path()
        resp = call(handover.open, "PUT", path, auth=OLD_PUSH, body=b"x")
        assert resp.status == 503 and resp.headers.get("Retry-After") == "120"
        assert not handover.upstream.reached("PUT", path)
    finally:
        handover.flag.unlink()
