"""renderers/caddyfile.py: the site's exact text, checked by a real `caddy validate` and as the JSON Caddy adapts it to."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
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
from tests.unit.support import DOMAIN, PULL_PASSWORD, PULL_USER, tool

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
