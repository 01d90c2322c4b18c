"""The program applied by the real Pulumi engine to the test host over SSH, then the registry used as CI and k3s.

One stack per module; the scenarios run in file order and each states what it changes. Flux is off: its
part runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from renderers.dockerconfigjson import dockerconfigjson
from tests.e2e.clients import ProcessSampler, stack_config
from tests.e2e.engine import Engine, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

STACK = "e2e"
SITE_FILE = "/etc/caddy/registry.caddy"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
ENV_FILE = "/etc/registry/registry.env"
PEBBLE_CLOSED_PORT = 5443
OBSERVERS = ("caddy-site-state", "registry-state", "k3s-trust-state", "maintenance-state")
"""The resources `pulumi refresh` reads the host for (providers/host_state.py), one SSH session each."""
CORE_COMMANDS = (
    "host-preflight",
    "host-data-dir",
    "registry-container",
    "caddy-site-file",
    "k3s-trust-file",
    "k3s-trust-restart",
)


@dataclass
class Stack(EngineStack):
    """The module's stack, with what the secrets check needs: the host's process table during each apply."""

    samples: list[str] = field(default_factory=list)
    secrets_seen: set[str] = field(default_factory=set)
    since: int = 0
    """Host clock when the fresh apply started (journal checks)."""
    logins: list[int] = field(default_factory=list)
    """SSH logins the host accepted during each apply."""

    def apply(self, hook: Any = None, **changes: Any) -> Run:
        since = self.clients.now()
        run = super().apply(hook, **changes)
        self.logins.append(self.clients.ssh_logins(since))
        self.secrets_seen |= set(self.secrets().values())
        return run

    def authfiles(self, tag: str) -> dict[str, str]:
        """0600 authfiles on the host: push (the dockerConfigJson output) and pull-only (what k3s and Flux get)."""
        pull = dockerconfigjson(self.host.domain, self.exports["pullUsername"], self.exports["pullPassword"])
        return {
            "push": self.clients.authfile(f"push-{tag}", self.exports["dockerConfigJson"]),
            "flux": self.clients.authfile(f"flux-{tag}", pull),
        }


def host_config(host: TestHost) -> dict[str, Any]:
    return stack_config(host, credentialRotation="1", flux="false")


@pytest.fixture(scope="module")
def stack(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh `pulumi up` to the test host, with the host's process table sampled throughout."""
    s: Stack = Stack.open(engine, STACK, testhost, tmp_path_factory.mktemp("e2e-project"), host_config(testhost))
    # Caddy picks HTTP-01 or TLS-ALPN-01 at random; with Pebble checking TLS-ALPN on a closed port only HTTP-01
    # can pass. Earlier modules may have left a certificate behind: start without one.
    s.clients.pebble_tls_port(PEBBLE_CLOSED_PORT)
    s.clients.forget_certificates()
    s.since = s.clients.now()
    try:
        with ProcessSampler(testhost) as sampler:
            t0 = time.monotonic()
            result = s.apply()
            print(f"\nfresh up: {time.monotonic() - t0:.1f}s, {s.logins[-1]} SSH logins")
        s.samples.extend(sampler.samples)
        assert result.ok, f"fresh up failed:\n{result.error}"
        yield s
    finally:
        s.cleanup()
        s.clients.pebble_tls_port(443)


# --- a ----------------------------------------------------------------------------------------------------


def test_fresh_apply_runs_every_command_once_in_dependency_order(stack: Stack) -> None:
    fresh = stack.history[0]
    assert set(fresh.changed().values()) == {"create"}
    names = [e.name for e in fresh.executions]
    assert set(CORE_COMMANDS) <= set(names)
    assert sorted(names) == sorted(set(names)), "a command ran twice"
    assert {e.phase for e in fresh.executions} == {"create"} and all(e.ok for e in fresh.executions)
    assert stack.logins[0] == len(fresh.executions)  # one SSH login per command, nothing else
    runs = {e.name: e for e in fresh.executions}
    for name, deps in stack.dependencies().items():
        for dep in deps & set(runs):
            if name in runs:
                assert runs[dep].ended <= runs[name].started, f"{name} started before {dep} ended"
    overlapping = [
        (a.name, b.name) for a in fresh.executions for b in fresh.executions if a.started < b.started < a.ended
    ]
    assert overlapping, "independent commands did not run concurrently"
    assert [e.stdout for e in fresh.ran("host-preflight")] == ["preflight: ok"]


def test_registry_container_runs_as_the_seed_does(stack: Stack) -> None:
    info = stack.clients.inspect_container()
    assert info["State"]["Running"]
    # Host networking, bound to 127.0.0.1: no published port, no docker-proxy, no container address.
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert not info["HostConfig"]["PortBindings"]
    assert "REGISTRY_HTTP_ADDR=127.0.0.1:5000" in info["Config"]["Env"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = [(m["Type"], m["Source"], m["Destination"]) for m in info["Mounts"]]
    assert mounts == [("bind", "/srv/data/registry", "/var/lib/registry")]
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in info["Config"]["Env"]
    listeners = stack.clients.sh("ss -Hltn 'sport = :5000' | awk '{print $4}'").stdout.split()
    assert listeners and all(addr == "127.0.0.1:5000" for addr in listeners), listeners


def test_caddy_serves_a_pebble_certificate_obtained_through_http01(stack: Stack) -> None:
    c = stack.clients
    c.wait_registry(timeout=60)
    current_root = c.sh("pebble-root --current /root/e2e/pebble-current.pem && echo ok").stdout
    assert "ok" in current_root
    s_client = c.sh(
        f"openssl s_client -connect 127.0.0.1:443 -servername {c.domain} -CAfile /root/e2e/pebble-current.pem "
        "-verify_return_error </dev/null 2>&1",
        check=False,
    ).stdout
    assert "Verify return code: 0 (ok)" in s_client, s_client[-2000:]
    assert "Pebble Intermediate CA" in s_client
    assert f"CN={c.domain}" in s_client.replace(" = ", "=")
    pebble_log = c.journal("pebble", stack.since)
    assert f"Attempting to validate w/ HTTP: http://{c.domain}:80/.well-known/acme-challenge/" in pebble_log
    assert "set VALID by completed challenge" in pebble_log
    caddy_log = [json.loads(line) for line in c.journal("caddy", stack.since).splitlines() if line.startswith("{")]
    solving = [e["challenge_type"] for e in caddy_log if e.get("msg") == "trying to solve challenge"]
    obtained = [e for e in caddy_log if e.get("msg") == "certificate obtained successfully"]
    assert solving and solving[-1] == "http-01", solving
    assert [e["identifier"] for e in obtained] == [c.domain]


def test_anonymous_and_wrong_password_get_401_with_a_basic_challenge(stack: Stack) -> None:
    anonymous = stack.clients.http("/v2/")
    assert anonymous.status == 401
    assert anonymous.headers.get("www-authenticate", "").lower().startswith("basic")
    assert anonymous.headers.get("docker-distribution-api-version") == "registry/2.0"
    wrong = stack.clients.http("/v2/", user=stack.exports["pushUsername"], password="not-the-password")
    assert wrong.status == 401
    right = stack.clients.http("/v2/", user=stack.exports["pushUsername"], password=stack.exports["pushPassword"])
    assert right.status == 200


def test_ci_pushes_k3s_pulls_flux_lists_and_the_pull_user_cannot_push(stack: Stack) -> None:
    c = stack.clients
    auth = stack.authfiles("a")
    c.push(c.make_image("app"), "e2e/app:1", auth["push"])
    pulled = c.k3s_pull("e2e/app:1")
    assert "Image is up to date for sha256:" in pulled.stdout
    assert json.loads(c.list_tags("e2e/app", auth["flux"]).stdout)["Tags"] == ["1"]
    denied = c.push(c.make_image("denied"), "e2e/app:pull-user", auth["flux"], check=False)
    assert denied.returncode != 0
    assert "403" in denied.stderr or "denied" in denied.stderr.lower(), denied.stderr
    assert "pull-user" not in c.list_tags("e2e/app", auth["flux"]).stdout


def test_registries_yaml_is_root_only_and_k3s_started_after_it_was_written(stack: Stack) -> None:
    c = stack.clients
    assert c.sh(f"stat -c '%U:%G %a' {REGISTRIES_YAML}").stdout.split() == ["root:root", "600"]
    mtime_ns = int(c.sh(f"python3 -c 'import os; print(os.stat(\"{REGISTRIES_YAML}\").st_mtime_ns)'").stdout)
    when, digest = c.starts()[-1]
    assert digest == c.sha256(REGISTRIES_YAML)
    seconds, _, fraction = when.rstrip("Z").partition(".")
    started_ns = int(datetime.fromisoformat(seconds + "+00:00").timestamp()) * 10**9 + int(fraction.ljust(9, "0"))
    assert started_ns > mtime_ns


# --- b ----------------------------------------------------------------------------------------------------


def test_reapply_without_changes_runs_nothing_and_restarts_nothing(stack: Stack) -> None:
    c = stack.clients
    before = (c.starts(), c.caddy_state(), c.inspect_container()["State"]["StartedAt"])
    result = stack.apply()
    assert result.ok, result.error
    assert result.changed() == {}
    assert result.executions == []
    assert stack.logins[-1] == 0  # a no-op `up` opens no SSH session on the host
    after = (c.starts(), c.caddy_state(), c.inspect_container()["State"]["StartedAt"])
    assert after == before


def test_right_after_an_up_preview_expects_no_changes_and_refresh_changes_nothing(stack: Stack) -> None:
    """What a PR preview and a drift check run against a stack that was just applied."""
    since = stack.clients.now()
    preview = stack.preview(expect_no_changes=True)
    assert preview.ok, preview.error
    refresh = stack.stack.refresh(expect_no_changes=True)
    assert refresh.ok, refresh.error
    assert set(refresh.changes) <= {"same"}, refresh.changes
    again = stack.preview(expect_no_changes=True)
    assert again.ok, again.error  # the refresh left the state as it was
    # The previews open no SSH session; the refresh opens one per observer (it reads the host back) and runs nothing.
    assert stack.clients.ssh_logins(since) == len(OBSERVERS)
    stack.history += [preview, refresh, again]  # their output is checked for secrets below


# --- c ----------------------------------------------------------------------------------------------------


def test_new_registry_image_replaces_the_container_and_keeps_every_image(stack: Stack) -> None:
    c = stack.clients
    auth = stack.authfiles("c")
    c.push(c.make_image("keep"), "e2e/keep:1", auth["push"])
    digests = {ref: c.digest(ref, auth["push"]) for ref in ("e2e/app:1", "e2e/keep:1")}
    old_id = c.inspect_container()["Id"]
    c.sh("docker tag registry:2 registry:2-e2e")
    result = stack.apply(registryImage="registry:2-e2e")
    assert result.ok, result.error
    changed = result.changed()
    assert changed["registry-container"] == "replace"
    assert not {"caddy-site-file", "k3s-trust-file", "k3s-trust-restart"} & set(changed), changed
    # delete_before_replace: the old container goes first, freeing its name and port
    assert [e.phase for e in result.ran("registry-container")] == ["delete", "create"]
    info = c.inspect_container()
    assert info["Id"] != old_id and info["Config"]["Image"] == "registry:2-e2e"
    c.wait_registry()
    assert {ref: c.digest(ref, auth["push"]) for ref in digests} == digests
    assert "Image is up to date" in c.k3s_pull(f"e2e/keep@{digests['e2e/keep:1']}").stdout


# --- d ----------------------------------------------------------------------------------------------------


def test_rotation_locks_out_old_credentials_and_restarts_k3s_once(stack: Stack) -> None:
    c = stack.clients
    old = {
        "push": (stack.exports["pushUsername"], stack.exports["pushPassword"]),
        "pull": (stack.exports["pullUsername"], stack.exports["pullPassword"]),
    }
    old_flux = stack.authfiles("d-old")["flux"]
    starts_before = c.starts()
    result = stack.apply(credentialRotation="2")
    assert result.ok, result.error
    changed = result.changed()
    assert (changed["caddy-site-file"], changed["k3s-trust-file"], changed["k3s-trust-restart"]) == (
        "update",
        "update",
        "replace",
    )
    assert "registry-container" not in changed
    assert [e.phase for e in result.ran("k3s-trust-restart")] == ["create"]
    for user, password in old.values():
        assert c.http("/v2/", user=user, password=password).status == 401
    assert stack.exports["pushPassword"] != old["push"][1]
    assert c.http("/v2/", user=stack.exports["pushUsername"], password=stack.exports["pushPassword"]).status == 200
    auth = stack.authfiles("d")
    c.push(c.make_image("rotated"), "e2e/rotated:1", auth["push"])
    assert "Image is up to date" in c.k3s_pull("e2e/rotated:1").stdout
    assert json.loads(c.list_tags("e2e/rotated", auth["flux"]).stdout)["Tags"] == ["1"]
    assert c.list_tags("e2e/rotated", old_flux, check=False).returncode != 0
    starts_after = c.starts()
    assert starts_after[: len(starts_before)] == starts_before
    assert len(starts_after) == len(starts_before) + 1
    assert starts_after[-1][1] == c.sha256(REGISTRIES_YAML)


# --- e ----------------------------------------------------------------------------------------------------


def test_site_that_fails_caddy_validate_fails_the_apply_and_the_old_site_keeps_serving(stack: Stack) -> None:
    c = stack.clients
    site_before, main_before, caddy_before = c.sha256(SITE_FILE), c.sha256("/etc/caddy/Caddyfile"), c.caddy_state()
    good_root = stack.config["acmeCaRoot"]
    try:
        # Passes the program's validation (an absolute path) but not Caddy's: the root file does not exist.
        result = stack.apply(acmeCaRoot="/etc/pebble/no-such-ca.pem")
        assert not result.ok
        # Not a rotation: the handover step's update installs the settled site, before anything that depends on it;
        # it fails, and nothing that depends on the site runs.
        assert [(e.name, e.phase, e.ok) for e in result.executions] == [("caddy-site-handover", "update", False)]
        assert "Process exited with status 1" in result.error
        assert "caddy validate rejected the new site" in result.error
        assert "loading trusted root CA's PEM file: /etc/pebble/no-such-ca.pem" in result.error
        assert (c.sha256(SITE_FILE), c.sha256("/etc/caddy/Caddyfile")) == (site_before, main_before)
        assert c.caddy_state() == caddy_before  # not reloaded, not restarted
        assert c.http("/v2/", user=stack.exports["pushUsername"], password=stack.exports["pushPassword"]).status == 200
        assert c.http("/v2/").status == 401
    finally:
        restored = stack.apply(acmeCaRoot=good_root)
    assert restored.ok, restored.error
    # The failed update kept the site steps' old state, which matches the restored config: nothing to run.
    assert restored.executions == [], [(e.name, e.phase) for e in restored.executions]


# --- f ----------------------------------------------------------------------------------------------------


def _still_serving(stack: Stack, digest_ref: str) -> None:
    c = stack.clients
    c.wait_registry(timeout=90)
    assert c.http("/v2/").status == 401
    assert c.http("/v2/", user=stack.exports["pushUsername"], password=stack.exports["pushPassword"]).status == 200
    auth = stack.authfiles("f")
    assert c.digest(digest_ref, auth["push"]) == digest_ref.split("@", 1)[1]
    assert "Image is up to date" in c.k3s_pull(digest_ref).stdout


def test_registry_and_site_survive_docker_and_host_restarts(stack: Stack) -> None:
    c = stack.clients
    auth = stack.authfiles("f0")
    digest_ref = f"e2e/app@{c.digest('e2e/app:1', auth['push'])}"
    container = c.inspect_container()["Id"]
    stack.host.restart_docker()
    _still_serving(stack, digest_ref)
    assert c.inspect_container()["Id"] == container
    starts = len(c.starts())
    stack.host.restart()
    c.trust_pebble()  # Pebble has a new root after a reboot; the bundle keeps the earlier ones
    _still_serving(stack, digest_ref)
    assert c.inspect_container()["Id"] == container
    assert len(c.starts()) == starts + 1  # k3s read registries.yaml again at boot
    result = stack.apply()
    assert result.ok and result.executions == [], result.error


# --- g ----------------------------------------------------------------------------------------------------


def test_secrets_never_reach_argv_world_readable_files_or_output(stack: Stack) -> None:
    # Another rotation, through the CLI as a newcomer runs it, with the process table sampled throughout.
    eng, project = stack.stack.engine, stack.stack.project_dir
    eng.cli(["config", "set", "registry:credentialRotation", "3", "--stack", STACK], cwd=project)
    with ProcessSampler(stack.host) as sampler:
        cli = eng.cli(["up", "--yes", "--stack", STACK, "--color", "never"], cwd=project, check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "pushPassword" in cli.stdout and "[secret]" in cli.stdout
    stack.config["credentialRotation"] = "3"
    stack.secrets_seen |= set(stack.secrets().values())
    secrets = sorted(stack.secrets_seen)
    assert len(secrets) >= 4 * 3 + 1  # push/pull password and hash per rotation (3), one HTTP secret

    samples = [*stack.samples, *sampler.samples]
    assert len(samples) > 20 and any("sudo -n sh -c" in s for s in samples), "the sampler saw no apply"
    in_argv = [s for s in secrets if any(s in sample for sample in samples)]
    assert in_argv == [], "secrets in a process argument list"

    current = stack.secrets()
    # Every file holding a current secret, with its mode and whether an unprivileged user can read it.
    matches = stack.clients.sh(
        "grep -rlsF -f - /etc /srv /var/lib/caddy /tmp /home /root /run | sort -u | while read -r f; do "
        'if runuser -u nobody -- test -r "$f"; then r=world-readable; else r=private; fi; '
        'stat -c "%a %U:%G $r %n" "$f"; done',
        stdin="\n".join(current.values()) + "\n",
        check=False,
    ).stdout.splitlines()
    # World-readable means readable by `nobody`: a 0644 file inside a 0700 directory (runc's config.json) is not.
    assert [m for m in matches if "world-readable" in m] == [], matches
    modes = {m.split()[3]: " ".join(m.split()[:2]) for m in matches}
    assert modes[REGISTRIES_YAML] == "600 root:root" and modes[ENV_FILE] == "600 root:root", matches
    assert modes[SITE_FILE] == "640 root:caddy", matches
    push_password = current["credentials-push password"]
    holders = stack.clients.sh(
        "grep -rlsF -f - /etc /srv /var/lib /tmp /home /root /run || true", stdin=push_password + "\n"
    ).stdout.split()
    assert all(h.startswith("/root/e2e/auth/") for h in holders), (
        f"the push password left the test's authfiles: {holders}"
    )

    # Everything the CLI printed in every run, and the state as `pulumi stack export` shows it.
    printed = [run.text for run in stack.history] + [cli.stdout, cli.stderr]
    printed.append(json.dumps(stack.stack.export()))
    leaked = [s for s in secrets if any(s in text for text in printed)]
    assert leaked == [], "secrets in the CLI's output or the exported state"


# --- h ----------------------------------------------------------------------------------------------------


def test_destroy_runs_every_delete_dependents_first_and_keeps_the_data(stack: Stack) -> None:
    c = stack.clients
    dependencies = stack.dependencies()
    result = stack.destroy()
    assert result.ok, result.error
    assert [s for s in stack.secrets_seen if s in result.text] == [], "a secret in the destroy's output"
    assert stack.stack.resources() == {}
    assert {e.phase for e in result.executions} == {"delete"}
    runs = {e.name: e for e in result.executions}
    for name, deps in dependencies.items():
        for dep in deps & set(runs):
            if name in runs:
                assert runs[name].ended <= runs[dep].started, f"{dep} was deleted before {name}, which uses it"
    assert c.sh("docker ps -aq --filter name=^registry$").stdout.strip() == ""
    assert c.sh(f"ls {SITE_FILE} {REGISTRIES_YAML} 2>/dev/null || true").stdout.strip() == ""
    assert "registry.caddy" not in c.sh("cat /etc/caddy/Caddyfile").stdout
    assert c.sh("systemctl is-active caddy").stdout.strip() == "active"  # the host's other sites keep running
    assert c.sh("find /srv/data/registry -type f | head -n 1").stdout.strip()  # the images stay
    assert c.sh("ss -Hltn 'sport = :5000'").stdout.strip() == ""
