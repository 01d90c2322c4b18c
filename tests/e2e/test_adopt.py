"""Taking over the hand-made setup: the test host is put in the state the seed describes, then one `up` takes it over.

While the `up` runs, one loop pulls through the site every 0.5 s with the credential in registries.yaml (re-read
each time) and another pulls through k3s every 5 s. The real Pulumi engine runs every `up` and `destroy` (the module's
stacks on the session's engine). Flux is off: its part runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from renderers.dockerconfigjson import dockerconfigjson
from tests.e2e.clients import CERT_DIR, REGISTRY_CA_FILE, Clients, stack_config
from tests.e2e.engine import Engine, Execution, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import TestHost

pytestmark = pytest.mark.e2e

STACK = "adopt"
REJECTED_STACK = "adopt-rejected"
CADDYFILE = "/etc/caddy/Caddyfile"
REGISTRIES_YAML = "/etc/rancher/k3s/registries.yaml"
DATA_DIR = "/srv/data/registry"
PUSH_USER = "robot_user"
OTHER_REGISTRY = "other.example.test:5000"
OTHER_SITE_PORT = 8081
IMAGES = ("team/api:1", "team/web:2", "tools/base:3")
q = shlex.quote

SEED_DOCKER_RUN = (
    "docker run -d --name registry --restart unless-stopped -p 127.0.0.1:5000:5000 "
    "-e REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry -v /srv/data/registry:/var/lib/registry registry:2"
)


def hand_made_caddyfile(domain: str, email: str, password_hash: str, acme_ca: str, acme_ca_root: str) -> str:
    """The seed's inline site, in the older form (`basicauth`, a `path_regexp` matcher), next to another site."""
    return f"""# Written by hand.
{{
	acme_ca {acme_ca}
	acme_ca_root {acme_ca_root}
}}

:{OTHER_SITE_PORT} {{
	respond "another site on this server"
}}

{domain} {{
	encode gzip
	tls {email}
	@v2 path_regexp ^/v2/.*
	basicauth @v2 {{
		{PUSH_USER} {password_hash}
	}}
	reverse_proxy localhost:5000
}}
"""


def hand_made_registries_yaml(domain: str, password: str) -> str:
    """Mirrors and configs for the registry (robot_user's plaintext password), and another registry's entry."""
    return f"""# k3s registries, set up by hand
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example.test"
  {domain}:
    endpoint:
      - "https://{domain}"
configs:
  {OTHER_REGISTRY}:
    auth:
      username: someone
      password: "their-own-secret"   # not ours
    tls:
      insecure_skip_verify: true
  {domain}:
    auth:
      username: {PUSH_USER}
      password: "{password}"
    tls:
      ca_file: {REGISTRY_CA_FILE}
"""


# Pulls a manifest and its first layer through the site with the credential registries.yaml holds right now.
SITE_LOOP = r"""
import base64, json, os, ssl, sys, time, urllib.error, urllib.request
import yaml
domain, refs, stop, interval = sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])
ctx = ssl.create_default_context(cafile=sys.argv[5])
accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
i = 0
while not os.path.exists(stop):
    t = time.time()
    user = "-"
    ref = refs[i % len(refs)]
    i += 1
    repo, tag = ref.rsplit(":", 1)
    try:
        with open("/etc/rancher/k3s/registries.yaml") as fh:
            auth = yaml.safe_load(fh)["configs"][domain]["auth"]
        user = auth["username"]
        header = "Basic " + base64.b64encode(f"{user}:{auth['password']}".encode()).decode()
        req = urllib.request.Request(f"https://{domain}/v2/{repo}/manifests/{tag}", headers={"Authorization": header, "Accept": accept})
        with urllib.request.urlopen(req, context=ctx, timeout=40) as r:
            manifest = json.load(r)
        blob = manifest["layers"][0]["digest"]
        req = urllib.request.Request(f"https://{domain}/v2/{repo}/blobs/{blob}", headers={"Authorization": header})
        with urllib.request.urlopen(req, context=ctx, timeout=40) as r:
            r.read()
        status = "200"
    except urllib.error.HTTPError as exc:
        status = str(exc.code)
    except Exception as exc:
        status = "error:" + type(exc).__name__ + ":" + str(exc).replace(" ", "_")[:120]
    print(f"{t:.3f} {status} {user} {time.time() - t:.2f}", flush=True)
    time.sleep(max(0.0, interval - (time.time() - t)))
"""

K3S_LOOP = """
while [ ! -e "$1" ]; do
  t=$(date +%s.%N)
  k3s ctr images rm "$2" >/dev/null 2>&1 || true
  if out=$(k3s crictl pull "$2" 2>&1); then echo "$t ok"; else echo "$t fail $(printf '%s' "$out" | tr '\\n' ' ' | tail -c 300)"; fi
  sleep "$3"
done
"""


@dataclass
class Loop:
    """A loop running inside the host until stopped; its output lines are kept."""

    host: TestHost
    argv: list[str]
    lines: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Loop:
        self._proc = subprocess.Popen(
            ["docker", "exec", self.host.name, *self.argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.strip())

    def wait(self) -> None:
        assert self._proc is not None and self._thread is not None
        self._proc.wait(timeout=120)
        self._thread.join(timeout=10)


@dataclass
class Adoption(EngineStack):
    """The module's stack (the takeover), and what the hand-made setup looked like before it."""

    old_password: str = ""
    digests: dict[str, str] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    """The hand-made state right before the first `up`."""
    rejected: Run | None = None
    """The first `up` of a throwaway stack whose site Caddy rejects."""
    rejected_after: dict[str, Any] = field(default_factory=dict)
    result: Run | None = None
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)
    """State entries (secrets in clear) right after the takeover `up`."""
    site_loop: list[str] = field(default_factory=list)
    k3s_loop: list[str] = field(default_factory=list)

    def stdout(self, name: str) -> str:
        """A command's stdout after the takeover, from the state (the events carry a secret one as [secret])."""
        return str(self.recorded[name]["outputs"]["stdout"])


def snapshot(c: Clients) -> dict[str, Any]:
    """What the takeover must not touch before the site is live (and what it changes after)."""
    return {
        "registries": c.sh(f"cat {REGISTRIES_YAML}").stdout,
        "registries_mode": c.sh(f"stat -c '%U:%G %a' {REGISTRIES_YAML}").stdout.strip(),
        "caddyfile": c.sh(f"cat {CADDYFILE}").stdout,
        "backups": c.sh(f"ls {CADDYFILE}.*.bak 2>/dev/null || true").stdout.split(),
        "container": c.inspect_container()["Id"],
        "starts": c.starts(),
        "data_dir": c.sh(f"stat -c '%U:%G %a' {DATA_DIR}").stdout.strip(),
    }


def _authfile(c: Clients, name: str, user: str, password: str) -> str:
    return c.authfile(name, dockerconfigjson(c.domain, user, password))


def put_in_hand_made_state(host: TestHost, c: Clients, password: str) -> dict[str, str]:
    """The seed's commands, run on the test host; three images pushed by hand. Returns their digests."""
    # Earlier modules' first `up` each kept the Caddyfile they changed as a dated backup (destroy keeps backups):
    # the hand-made host has none.
    c.sh(
        "docker rm -f registry >/dev/null 2>&1 || true; rm -rf /srv/data/registry /etc/caddy/registry.caddy "
        f"{CADDYFILE}.*.bak"
    )
    c.sh(SEED_DOCKER_RUN)
    password_hash = c.sh("caddy hash-password", stdin=password + "\n").stdout.strip()
    assert password_hash.startswith("$2a$14$")
    caddyfile = hand_made_caddyfile(host.domain, "ops@example.com", password_hash, host.acme_ca_url, host.acme_ca_root)
    c.sh(f"cat > {CADDYFILE} && systemctl reload caddy", stdin=caddyfile)
    c.sh(
        f"install -d -m 0755 /etc/rancher/k3s && umask 022 && cat > {REGISTRIES_YAML} && chmod 0644 {REGISTRIES_YAML}"
        " && systemctl restart k3s",
        stdin=hand_made_registries_yaml(host.domain, password),
    )
    c.wait_registry(timeout=90)
    ci = _authfile(c, "ci-hand-made", PUSH_USER, password)
    digests = {}
    for ref in IMAGES:
        c.push(c.make_image(ref.replace("/", "-").replace(":", "-")), ref, ci)
        digests[ref] = c.digest(ref, ci)
    assert "Image is up to date" in c.k3s_pull(IMAGES[0]).stdout  # the cluster pulls with robot_user today
    return digests


@pytest.fixture(scope="module")
def adoption(testhost: TestHost, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adoption]:
    c = Clients(testhost)
    c.pebble_tls_port(5443)  # HTTP-01 only (see test_scenarios)
    c.forget_certificates()
    stock_caddyfile = c.sh(f"cat {CADDYFILE}").stdout
    old_password = secrets.token_urlsafe(24)
    digests = put_in_hand_made_state(testhost, c, old_password)
    config = stack_config(testhost, existingPushPassword=old_password, flux="false")
    a: Adoption = Adoption.open(
        engine, STACK, testhost, tmp_path_factory.mktemp("adopt-project"), config,
        old_password=old_password, digests=digests, before=snapshot(c),
    )  # fmt: skip
    throwaway: EngineStack | None = None
    try:
        # First, on a throwaway stack, the issue's failure: a site Caddy rejects must leave everything as it was.
        throwaway = EngineStack.open(
            engine, REJECTED_STACK, testhost, tmp_path_factory.mktemp("adopt-rejected"),
            {**config, "acmeCaRoot": "/etc/pebble/no-such-ca.pem"},
        )  # fmt: skip
        a.rejected = throwaway.apply()
        a.rejected_after = snapshot(c)
        # What the failed `up` recorded is forgotten (a user would start over): nothing on the host is touched.
        throwaway.stack.remove()
        throwaway = None
        stop = f"/run/adopt-loops-{time.monotonic_ns()}.stop"
        refs = ",".join(IMAGES)
        site = Loop(
            testhost,
            ["python3", "-c", SITE_LOOP, testhost.domain, refs, stop, "0.5", f"{CERT_DIR}/ca.crt"],
        ).start()
        k3s = Loop(testhost, ["sh", "-c", K3S_LOOP, "k3s-loop", stop, f"{testhost.domain}/{IMAGES[1]}", "5"]).start()
        time.sleep(3)
        try:
            a.result = a.apply()  # the stack's first `up`
            time.sleep(6)
            if a.result.ok:
                a.recorded = a.stack.resources(show_secrets=True)
        finally:
            c.sh(f"touch {stop}")
            site.wait()
            k3s.wait()
            c.sh(f"rm -f {stop}")
        a.site_loop, a.k3s_loop = site.lines, k3s.lines
        print(
            f"\nsite loop: {len(site.lines)} pulls, statuses {sorted(set(r.split()[1] for r in site.lines))}; "
            f"k3s loop: {len(k3s.lines)} pulls; takeover up: {a.result.seconds:.1f}s"
        )
        yield a
    finally:
        if throwaway is not None:
            throwaway.stack.remove()
        a.cleanup()
        # Leave the host as the other modules expect it: no hand-made leftovers.
        c.sh(
            f"rm -f {REGISTRIES_YAML} {CADDYFILE}.*.bak; cat > {CADDYFILE}; systemctl reload caddy",
            stdin=stock_caddyfile,
        )
        c.sh(f"docker rm -f registry >/dev/null 2>&1 || true; rm -rf {DATA_DIR}/docker; systemctl restart k3s")
        c.pebble_tls_port(443)


def names(result: Run) -> dict[str, Execution]:
    return {e.name: e for e in result.executions}


# --- a site Caddy rejects ---------------------------------------------------------------------------------


def test_a_rejected_site_leaves_the_container_registries_yaml_and_k3s_untouched(adoption: Adoption) -> None:
    rejected = adoption.rejected
    assert rejected is not None and not rejected.ok
    assert "caddy validate rejected the new site" in rejected.error
    # The handover step ran and failed; nothing that depends on the site ran at all.
    assert [(e.phase, e.ok) for e in rejected.ran("caddy-site-handover")] == [("create", False)]
    for name in ("caddy-site-file", "registry-container", "k3s-trust-file", "k3s-trust-restart", "verify-check"):
        assert rejected.ran(name) == [], name
    assert set(names(rejected)) == {"host-preflight", "host-data-dir", "caddy-site-handover"}
    assert adoption.rejected_after == adoption.before  # same container, files, modes, backups and k3s starts


# --- the takeover -----------------------------------------------------------------------------------------


def test_the_first_up_takes_over_without_a_manual_step(adoption: Adoption) -> None:
    result = adoption.result
    assert result is not None and result.ok, result.error if result else "no result"
    ran = names(result)
    site = ran["caddy-site-handover"]
    # Nothing that relies on the site's credentials or its retries starts before the site is live.
    for name in ("registry-container", "k3s-trust-file", "k3s-trust-restart"):
        assert site.ended <= ran[name].started, f"{name} started before the site was live"
    assert ran["k3s-trust-file"].ended <= ran["k3s-trust-restart"].started
    assert "registries.yaml written" in adoption.stdout("k3s-trust-file")
    assert "restarted" in adoption.stdout("k3s-trust-restart")
    assert len(adoption.clients.starts()) == len(adoption.before["starts"]) + 1  # one k3s restart


def test_preflight_said_what_it_takes_over(adoption: Adoption) -> None:
    assert adoption.result is not None
    out = names(adoption.result)["host-preflight"].stdout or ""
    domain = adoption.host.domain
    assert "preflight: takes over the existing container registry (registry:2)" in out
    assert f"the data directory {DATA_DIR} is kept as it is (root:root 755)" in out
    assert f"preflight: takes over the inline site for {domain} in {CADDYFILE} (line " in out
    assert f"preflight: takes over {REGISTRIES_YAML} (mode 644)" in out
    assert out.endswith("preflight: ok")


def test_no_pull_through_the_site_fails_with_401_and_at_most_one_fails_at_all(adoption: Adoption) -> None:
    rows = [line.split() for line in adoption.site_loop if line[:1].isdigit()]
    assert len(rows) >= 20, adoption.site_loop[-5:]
    statuses = [row[1] for row in rows]
    assert "401" not in statuses, [r for r in rows if r[1] == "401"]
    failed = [r for r in rows if r[1] != "200"]
    assert len(failed) <= 1, failed
    users = [row[2] for row in rows]
    assert users[0] == PUSH_USER and users[-1] == "k3s_pull"  # the credential in registries.yaml changed mid-loop
    assert len(rows) == len(adoption.site_loop), [line for line in adoption.site_loop if not line[:1].isdigit()]


def test_no_pull_through_k3s_fails(adoption: Adoption) -> None:
    rows = [line.split(maxsplit=2) for line in adoption.k3s_loop]
    assert len(rows) >= 3, adoption.k3s_loop
    assert [r for r in rows if r[1] != "ok"] == []


def test_every_image_keeps_its_digest_and_cis_existing_password_still_pushes(adoption: Adoption) -> None:
    c = adoption.clients
    ci = _authfile(c, "ci-after", PUSH_USER, adoption.old_password)
    assert {ref: c.digest(ref, ci) for ref in IMAGES} == adoption.digests
    c.push(c.make_image("after-takeover"), "team/api:after", ci)
    assert sorted(json.loads(c.list_tags("team/api", ci).stdout)["Tags"]) == ["1", "after"]
    assert adoption.exports["pushPassword"] == adoption.old_password
    for ref, digest in adoption.digests.items():
        assert "Image is up to date" in c.k3s_pull(f"{ref.split(':')[0]}@{digest}").stdout


def test_registries_yaml_keeps_every_other_entry_and_is_root_only(adoption: Adoption) -> None:
    c = adoption.clients
    text = c.sh(f"cat {REGISTRIES_YAML}").stdout
    before = yaml.safe_load(adoption.before["registries"])
    after = yaml.safe_load(text)
    assert after["mirrors"] == before["mirrors"]
    assert after["configs"][OTHER_REGISTRY] == before["configs"][OTHER_REGISTRY]
    assert after["configs"][adoption.host.domain]["auth"] == {
        "username": "k3s_pull", "password": adoption.exports["pullPassword"],
    }  # fmt: skip
    # Byte for byte: every line outside the program's entry is still there, in order.
    ours_old = adoption.before["registries"].split(f"  {adoption.host.domain}:\n    auth:")[1]
    kept = adoption.before["registries"].replace(f"  {adoption.host.domain}:\n    auth:{ours_old}", "")
    assert text.startswith(kept), text
    assert c.sh(f"stat -c '%U:%G %a' {REGISTRIES_YAML}").stdout.split() == ["root:root", "600"]


def test_the_inline_site_is_replaced_in_one_reload_and_kept_as_a_dated_backup(adoption: Adoption) -> None:
    c = adoption.clients
    assert adoption.result is not None
    main = c.sh(f"cat {CADDYFILE}").stdout
    domain = adoption.host.domain
    assert f"\n{domain} {{" not in main and "basicauth" not in main
    assert main.rstrip().endswith("import /etc/caddy/registry.caddy")
    assert f":{OTHER_SITE_PORT} {{" in main and "acme_ca_root" in main  # other sites and global options stay
    backups = c.sh(f"ls {CADDYFILE}.*.bak").stdout.split()
    assert len(backups) == 1 and backups[0].startswith(f"{CADDYFILE}.20")
    assert c.sh(f"cat {q(backups[0])}").stdout == adoption.before["caddyfile"]
    assert c.sh(f"stat -c '%U:%G %a' {q(backups[0])}").stdout.split() == ["root:root", "600"]  # it holds a hash
    site = adoption.stdout("caddy-site-handover")
    assert "taking over lines " in site and backups[0] in site
    assert c.sh(f"curl -sS http://127.0.0.1:{OTHER_SITE_PORT}/").stdout == "another site on this server"


def test_the_container_is_the_programs_and_the_data_directory_is_untouched(adoption: Adoption) -> None:
    c = adoption.clients
    info = c.inspect_container()
    assert info["Id"] != adoption.before["container"]
    assert any(e.startswith("REGISTRY_HTTP_SECRET=") for e in info["Config"]["Env"])
    assert c.sh(f"stat -c '%U:%G %a' {DATA_DIR}").stdout.strip() == adoption.before["data_dir"]


def test_a_second_up_changes_nothing(adoption: Adoption) -> None:
    again = adoption.apply()
    assert again.ok, again.error
    assert again.executions == []


def test_an_update_whose_site_is_rejected_leaves_registries_yaml_and_k3s_untouched(adoption: Adoption) -> None:
    c = adoption.clients
    ca_copy = "/etc/rancher/k3s/registry-ca-copy.pem"
    c.sh(f"cp {REGISTRY_CA_FILE} {ca_copy}")
    before = snapshot(c)
    good_root = adoption.config["acmeCaRoot"]
    # Both the site (acmeCaRoot) and the trust file (registryCaFile) change; Caddy rejects the site.
    adoption.configure(registryCaFile=ca_copy, acmeCaRoot="/etc/pebble/no-such-ca.pem")
    plan = adoption.preview()
    assert plan.ok, plan.error
    assert {"caddy-site-file", "k3s-trust-file", "k3s-trust-restart"} <= set(plan.changed()), plan.changed()
    result = adoption.apply()
    assert not result.ok
    # The engine starts only the handover step's update: everything that depends on the site waits and never runs.
    assert set(names(result)) == {"caddy-site-handover"}
    assert "caddy validate rejected the new site" in result.error
    assert snapshot(c) == before
    restored = adoption.apply(registryCaFile=REGISTRY_CA_FILE, acmeCaRoot=good_root)
    assert restored.ok and restored.executions == [], restored.error


def test_destroy_removes_only_the_programs_entry_and_keeps_the_data(adoption: Adoption) -> None:
    c = adoption.clients
    result = adoption.destroy()
    assert result.ok, result.error
    assert adoption.stack.resources() == {}
    after = yaml.safe_load(c.sh(f"cat {REGISTRIES_YAML}").stdout)
    before = yaml.safe_load(adoption.before["registries"])
    assert after == {"mirrors": before["mirrors"], "configs": {OTHER_REGISTRY: before["configs"][OTHER_REGISTRY]}}
    assert c.sh(f"find {DATA_DIR} -type f | wc -l").stdout.strip() != "0"
    assert "registry.caddy" not in c.sh(f"cat {CADDYFILE}").stdout
