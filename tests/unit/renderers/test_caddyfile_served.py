"""renderers/caddyfile.py's site served by a real Caddy in front of a stand-in registry: the auth split, the allowlist,
the maintenance answer, the upstream slots, the credential handover."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from renderers.caddyfile import (
    UPSTREAM_SLOTS,
    maintenance_error,
    render_caddyfile,
)
from renderers.dockerconfigjson import basic_auth_value
from tests.unit.renderers.test_caddyfile import (
    API_HEADER,
    OLD_PULL,
    OLD_PULL_PASSWORD,
    OLD_PUSH,
    OLD_PUSH_PASSWORD,
    PUSH_PASSWORD,
    PUSH_USER,
    caddy_env,
    handover_spec,
    spec,
)
from tests.unit.support import DOMAIN, PULL_PASSWORD, PULL_USER, free_port, tool


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
