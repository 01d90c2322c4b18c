"""The registry from a network neighbour's side: only the server itself reaches it; the site on 443 still works.

A second container of the outer Docker engine (the neighbour) sits on the test host's network, as another machine on
the server's L2 segment would, and routes the server's inner Docker bridge subnets and its other addresses through
the server. First it shows that it does reach a container published the old way (`-p 127.0.0.1:5000:5000`, the
seed's registry, made by hand before the program runs): the route, the server's forwarding and the test host's
egress guard let such traffic through. Then the real Pulumi engine applies the program (`pulumi up`, one stack for the
module) and the neighbour gets no answer on port 5000 anywhere, while the site answers it on 443 with auth. Flux is
off: its part runs on the host's Kubernetes API in test_flux.py.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from renderers.caddyfile import MAINTENANCE_FLAG
from renderers.maintenance_script import MAINTENANCE_SCRIPT
from renderers.probe_image import PROBE_REPOSITORY
from renderers.verify_script import curl_user_line
from tests.e2e.clients import stack_config
from tests.e2e.engine import Engine, Run
from tests.e2e.stacks import EngineStack
from tests.e2e.testhost import LABEL, TestHost, docker

pytestmark = pytest.mark.e2e

STACK = "net"
PORT = 5000
"""The registry's port (registryPort) and the container port of the seed's registry."""
DATA = "/srv/data/registry"
SEED = (
    f"docker run -d --name registry --restart unless-stopped -p 127.0.0.1:{PORT}:5000 "
    f"-v {DATA}:/var/lib/registry registry:2"
)
"""The hand-made registry the program takes over, run the way the issue found it."""
OTHER = "regtest-exposed"
OTHER_PORT = 8080
OTHER_RUN = (
    f"docker run -d --name {OTHER} -p 127.0.0.1:5099:{OTHER_PORT} -e REGISTRY_HTTP_ADDR=:{OTHER_PORT} registry:2"
)
"""Something else on the server published the same way: preflight warns about it and leaves it alone."""
NO_ANSWER = "000"
q = shlex.quote


@dataclass
class Neighbour:
    """A machine on the server's network (a container of the outer engine) that routes through the server."""

    name: str

    def sh(self, cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["docker", "exec", *(["-i"] if stdin is not None else []), self.name, "bash", "-c", cmd]
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"neighbour: {cmd!r} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def http(self, url: str, *curl: str, stdin: str = "") -> tuple[str, str]:
        """(HTTP status or 000 for no answer, body or curl's error) of one request from the neighbour."""
        out = self.sh(
            f"curl -sS -K - --connect-timeout 3 -m 15 -o /tmp/body -w '%{{http_code}}' {' '.join(map(q, curl))} "
            f"{q(url)} 2>/tmp/err; echo; cat /tmp/body /tmp/err 2>/dev/null; rm -f /tmp/body /tmp/err",
            stdin=stdin,
        ).stdout
        status, _, rest = out.partition("\n")
        return status.strip(), rest.strip()


@dataclass
class Lan:
    host: TestHost
    neighbour: Neighbour
    server_ip: str
    routes: list[str]
    """What the neighbour sends through the server: the server's bridge subnets and its other addresses."""

    def server(self, cmd: str, check: bool = True) -> str:
        return self.host.exec(cmd, check=check).stdout

    def server_addresses(self) -> list[str]:
        """Every IPv4 address of the server but loopback: its LAN address, its bridges' gateways."""
        out = self.server("ip -4 -o addr show | awk '{print $4}'")
        return [a.split("/")[0] for a in out.split() if not a.startswith("127.")]

    def container_addresses(self) -> dict[str, str]:
        """name -> address of every running container of the server's Docker."""
        out = self.server(
            "docker ps -q | xargs -r docker inspect -f "
            "'{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}'"
        )
        found = {}
        for line in out.splitlines():
            name, *addresses = line.split()
            for address in addresses:
                found[name.lstrip("/")] = address
        return found


@pytest.fixture(scope="module")
def lan(testhost: TestHost) -> Iterator[Lan]:
    """The neighbour, on the test host's network, with routes to the server's bridges and addresses via the server."""
    info = json.loads(docker("inspect", testhost.name))[0]
    [(network, settings)] = info["NetworkSettings"]["Networks"].items()
    server_ip = settings["IPAddress"]
    neighbour = Neighbour(f"{testhost.name}-neighbour")
    docker("rm", "-f", neighbour.name, check=False)
    docker(
        "run", "-d", "--name", neighbour.name, "--hostname", "neighbour", "--network", network,
        "--cap-add", "NET_ADMIN", "--label", f"{LABEL}=neighbour", "--entrypoint", "sleep", testhost.image, "infinity",
    )  # fmt: skip
    try:
        subnets = testhost.exec(
            "docker network ls -q --filter driver=bridge | xargs docker network inspect "
            "-f '{{range .IPAM.Config}}{{.Subnet}} {{end}}'"
        ).stdout.split()
        kernel = testhost.exec("ip -4 -o route show proto kernel | awk '{print $1}'").stdout.split()
        lan_net = ipaddress.ip_network(f"{server_ip}/{settings['IPPrefixLen']}", strict=False)
        routes = sorted({s for s in [*subnets, *kernel] if ipaddress.ip_network(s) != lan_net and ":" not in s})
        assert routes, "the server has no bridge subnet to route to"
        lan = Lan(testhost, neighbour, server_ip, routes)
        covered = [ipaddress.ip_network(r) for r in routes] + [lan_net]
        lan.routes += [
            f"{a}/32" for a in lan.server_addresses() if not any(ipaddress.ip_address(a) in n for n in covered)
        ]
        for route in lan.routes:
            neighbour.sh(f"ip route replace {q(route)} via {q(server_ip)}")
        yield lan
    finally:
        docker("rm", "-f", neighbour.name, check=False)


@dataclass
class Net(EngineStack):
    """The module's stack, and what the neighbour saw before it was applied."""

    neighbourhood: Lan | None = None
    """The neighbour and the server's addresses (the `lan` fixture)."""
    before: dict[str, tuple[str, str]] = field(default_factory=dict)
    """What the neighbour got before the program ran, by target (the positive control)."""
    seed_address: str = ""
    other_before: dict[str, Any] = field(default_factory=dict)
    fresh: Run | None = None
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)
    """State entries (secrets in clear) after the fresh `up`."""

    @property
    def lan(self) -> Lan:
        assert self.neighbourhood is not None
        return self.neighbourhood

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.lan.server(f"docker inspect {q(name)}"))[0]

    def probe_targets(self) -> list[str]:
        """Every address the neighbour can route to on the server's side, plus where the seed's registry was."""
        found = {self.lan.server_ip, *self.lan.server_addresses(), *self.lan.container_addresses().values()}
        found.add(self.seed_address)
        return sorted(found)


@pytest.fixture(scope="module")
def net(lan: Lan, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    host = lan.host
    n: Net = Net.open(
        engine, STACK, host, tmp_path_factory.mktemp("net-project"), stack_config(host, flux="false"), neighbourhood=lan
    )
    n.clients.trust_pebble()
    try:
        # A fresh server: no container and no data left by an earlier module (the program never deletes data).
        lan.server(
            f"docker rm -f registry {OTHER} >/dev/null 2>&1 || true; rm -rf {DATA}/docker; {OTHER_RUN} >/dev/null; {SEED} >/dev/null"
        )
        n.seed_address = n.inspect("registry")["NetworkSettings"]["IPAddress"]
        other = lan.container_addresses()[OTHER]
        deadline = time.monotonic() + 30
        while lan.server(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{PORT}/v2/", check=False) != "200":
            assert time.monotonic() < deadline, "the seed's registry did not start"
            time.sleep(0.3)
        n.before = {
            "seed": lan.neighbour.http(f"http://{n.seed_address}:{PORT}/v2/_catalog"),
            "other": lan.neighbour.http(f"http://{other}:{OTHER_PORT}/v2/"),
        }
        n.other_before = n.inspect(OTHER)
        n.fresh = n.apply()
        assert n.fresh.ok, f"fresh up failed:\n{n.fresh.error}"
        n.recorded = n.stack.resources(show_secrets=True)
        yield n
    finally:
        # Leave the shared host as the next module expects a fresh one: nothing of this stack, no data.
        n.cleanup()
        lan.server(
            f"docker rm -f registry {OTHER} >/dev/null 2>&1; rm -rf {DATA}/docker /srv/backups/registry "
            f"{MAINTENANCE_FLAG}",
            check=False,
        )


def no_answer_on_the_registry_port(net: Net) -> dict[str, tuple[str, str]]:
    """target -> what the neighbour got on port 5000 there, for every target that answered."""
    answered = {}
    for address in net.probe_targets():
        status, detail = net.lan.neighbour.http(f"http://{address}:{PORT}/v2/_catalog")
        if status != NO_ANSWER:
            answered[address] = (status, detail)
    return answered


# --- the positive control: the route works, so a "no answer" below means something -----------------------------


def test_neighbour_reached_the_seeds_registry_through_the_route_before_the_program_ran(net: Net) -> None:
    assert net.lan.server("sysctl -n net.ipv4.ip_forward").strip() == "1"
    status, body = net.before["seed"]
    assert (status, json.loads(body)) == ("200", {"repositories": []}), net.before["seed"]
    assert net.before["other"][0] == "200", net.before["other"]


def test_neighbour_still_reaches_the_other_published_container_after_the_apply(net: Net) -> None:
    other = net.lan.container_addresses()[OTHER]
    assert net.lan.neighbour.http(f"http://{other}:{OTHER_PORT}/v2/")[0] == "200"


# --- the registry: the server only -------------------------------------------------------------------------------


def test_registry_runs_on_host_networking_bound_to_loopback_only(net: Net) -> None:
    info = net.inspect("registry")
    assert info["HostConfig"]["NetworkMode"] == "host" and not info["HostConfig"]["PortBindings"]
    assert info["NetworkSettings"]["Networks"].keys() == {"host"}
    env = info["Config"]["Env"]
    assert f"REGISTRY_HTTP_ADDR=127.0.0.1:{PORT}" in env and "REGISTRY_HTTP_DEBUG_ADDR=" in env
    # Every socket the registry's processes listen on (IPv4 or IPv6, the API or a debug listener): 127.0.0.1:5000.
    pids = net.lan.server("docker top registry -eo pid | sed 1d").split()
    listening = net.lan.server("ss -Hltnup").splitlines()
    mine = [line.split()[4] for line in listening if any(f"pid={pid}," in line for pid in pids)]
    assert mine == [f"127.0.0.1:{PORT}"], listening
    proxies = net.lan.server("ps -eo args | grep 'docker-prox[y] ' || true").splitlines()
    assert proxies and not [p for p in proxies if f"-host-port {PORT} " in p + " "], proxies
    assert f"--dport {PORT} " not in net.lan.server("iptables -S DOCKER") + " "


def test_neighbour_gets_no_answer_from_the_registry_on_any_address(net: Net) -> None:
    targets = net.probe_targets()
    assert net.lan.server_ip in targets and net.seed_address in targets and len(targets) >= 4, targets
    assert no_answer_on_the_registry_port(net) == {}


def test_local_check_on_the_server_answers(net: Net) -> None:
    for url in (f"http://localhost:{PORT}/v2/", f"http://127.0.0.1:{PORT}/v2/"):
        result = net.host.ssh(f"curl -sS -w ' %{{http_code}}' {url}")
        assert result.stdout.strip() == "{} 200", result


def test_site_answers_the_neighbour_on_443_with_auth(net: Net) -> None:
    neighbour, domain = net.lan.neighbour, net.clients.domain
    neighbour.sh("cat > /tmp/pebble-roots.pem", stdin=net.host.pebble_root())
    push = curl_user_line(net.exports["pushUsername"], net.exports["pushPassword"]) + "\n"
    pull = curl_user_line(net.exports["pullUsername"], net.exports["pullPassword"]) + "\n"
    # Through its LAN address and through a bridge gateway reached over the route: a listener on every address of
    # the server answers the neighbour on both (so the registry's silence above is its binding, not the network).
    gateway = next(a for a in net.lan.server_addresses() if a != net.lan.server_ip)
    for address in (net.lan.server_ip, gateway):
        tls = ("--cacert", "/tmp/pebble-roots.pem", "--resolve", f"{domain}:443:{address}")
        url = f"https://{domain}/v2/"
        assert neighbour.http(url, *tls)[0] == "401", address
        assert neighbour.http(url, *tls, stdin=push)[0] == "200", address
        assert neighbour.http(url, *tls, stdin=pull)[0] == "200", address
        status, body = neighbour.http(f"https://{domain}/v2/_catalog", *tls, stdin=pull)
        assert status == "200" and PROBE_REPOSITORY in json.loads(body)["repositories"], body


# --- preflight -----------------------------------------------------------------------------------------------


def test_preflight_warns_about_the_other_published_container_and_leaves_it_alone(net: Net) -> None:
    assert net.fresh is not None
    [preflight] = net.fresh.ran("host-preflight")
    assert preflight.ok and preflight.stdout and preflight.stdout.splitlines()[-1] == "preflight: ok", preflight.stdout
    # The seed's hand-made `registry` is reported as taken over (the takeover report), nothing else.
    takes = preflight.stdout.splitlines()[:-1]
    assert len(takes) == 1 and takes[0].startswith("preflight: takes over the existing container registry ("), takes
    stderr = str(net.recorded["host-preflight"]["outputs"]["stderr"])  # the events carry stdout only
    warnings = [line for line in stderr.splitlines() if line.startswith("preflight: warning:")]
    assert warnings == [line for line in stderr.splitlines() if line.strip()], stderr
    # The other published container is warned about; the hand-made `registry` is replaced, not warned about. (Other
    # warnings, such as backups on the data directory's filesystem, are not about containers.)
    containers = [line for line in warnings if line.startswith("preflight: warning: container ")]
    assert len(containers) == 1, warnings
    assert containers[0].startswith(f"preflight: warning: container {OTHER} publishes 127.0.0.1:5099->{OTHER_PORT}/tcp: ")
    after = net.inspect(OTHER)
    assert after["State"]["Running"]
    for key in ("Id", "Created"):
        assert after[key] == net.other_before[key]
    assert after["State"]["StartedAt"] == net.other_before["State"]["StartedAt"]
    assert after["HostConfig"]["PortBindings"] == net.other_before["HostConfig"]["PortBindings"]


# --- the maintenance windows recreate the container with the same networking ------------------------------------


def test_maintenance_window_keeps_the_networking(net: Net) -> None:
    host = net.lan.host
    stop = f"/run/net-sampler-{time.monotonic_ns()}.stop"
    fmt = "{{.HostConfig.NetworkMode}}|{{range .Config.Env}}{{.}};{{end}}"
    loop = f"while [ ! -e {stop} ]; do docker inspect -f {q(fmt)} registry 2>/dev/null || echo gone; sleep 0.1; done"
    sampler = subprocess.Popen(["docker", "exec", host.name, "sh", "-c", loop], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        window = host.ssh(f"sudo -n {MAINTENANCE_SCRIPT} backup", check=False, timeout=300)
        time.sleep(0.5)
    finally:
        host.exec(f"touch {stop}")
        out, _ = sampler.communicate(timeout=30)
        host.exec(f"rm -f {stop}")
    assert window.returncode == 0, window.stdout + window.stderr
    assert "read-only window open for backup" in window.stdout, window.stdout
    samples = [line for line in out.splitlines() if line.strip() and line != "gone"]
    read_only = [s for s in samples if "REGISTRY_STORAGE_MAINTENANCE_READONLY=" in s]
    assert read_only, "the sampler never saw the read-only container"
    assert len(read_only) < len(samples)
    for sample in samples:
        mode, _, env = sample.partition("|")
        listen = sorted(e for e in env.split(";") if e.startswith(("REGISTRY_HTTP_ADDR=", "REGISTRY_HTTP_DEBUG_ADDR=")))
        assert (mode, listen) == ("host", [f"REGISTRY_HTTP_ADDR=127.0.0.1:{PORT}", "REGISTRY_HTTP_DEBUG_ADDR="])
    # After the window: the same answers as before it.
    assert net.inspect("registry")["HostConfig"]["NetworkMode"] == "host"
    assert no_answer_on_the_registry_port(net) == {}
    assert host.ssh(f"curl -fsS http://localhost:{PORT}/v2/").stdout.strip() == "{}"
