"""Registry clients run inside the test host as CI, k3s and Flux would, plus probes for what the host shows.

Credentials reach every client through a 0600 file or stdin, never through an argument list.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from renderers.maintenance_script import MAINTENANCE_SCRIPT
from tests.e2e.testhost import TestHost

WORK = "/root/e2e"
CERT_DIR = f"{WORK}/certs"
"""skopeo --cert-dir: ca.crt is Pebble's issuing roots (current and earlier)."""
AUTH_DIR = f"{WORK}/auth"
REGISTRY_CA_FILE = "/etc/rancher/k3s/registry-ca.pem"
"""Where registryCaFile points: the CA k3s's containerd trusts for the registry."""
STARTS_LOG = "/var/lib/k3s-standin/starts.log"
PEBBLE_CONFIG = "/etc/pebble/pebble-config.json"
CADDY_DATA = "/var/lib/caddy/.local/share/caddy"

q = shlex.quote


@dataclass
class Http:
    status: int
    headers: dict[str, str]
    body: str


class Clients:
    """Everything a test does to the registry, from inside the host."""

    def __init__(self, host: TestHost) -> None:
        self.host = host
        self.domain = host.domain

    def sh(self, cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.exec(cmd, input=stdin.encode() if stdin is not None else None, check=check)

    def maintenance(self, args: str, timeout: float) -> str:
        """registry-maintenance as the operator runs it (sudo, through SSH); fails the test if it fails."""
        result = self.host.ssh(f"sudo -n {MAINTENANCE_SCRIPT} {args}", check=False, timeout=timeout)
        assert result.returncode == 0, f"registry-maintenance {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def trust_pebble(self) -> None:
        """Save Pebble's roots for skopeo/curl and for k3s (registryCaFile); rerun after a host reboot."""
        self.sh(
            f"install -d -m 0700 {WORK} {AUTH_DIR} && install -d -m 0755 {CERT_DIR} /etc/rancher/k3s && "
            f"pebble-root {CERT_DIR}/ca.crt && pebble-root {REGISTRY_CA_FILE}"
        )

    def pebble_tls_port(self, port: int) -> None:
        """Where Pebble validates TLS-ALPN-01; a closed port leaves HTTP-01 as the only challenge that can pass."""
        self.sh(f'sed -i \'s/"tlsPort": *[0-9]*/"tlsPort": {port}/\' {PEBBLE_CONFIG} && systemctl restart pebble')
        self.trust_pebble()

    def forget_certificates(self) -> None:
        """Drop Caddy's certificates and ACME accounts, so the next site gets a freshly issued certificate."""
        self.sh(f"rm -rf {CADDY_DATA}/certificates {CADDY_DATA}/acme {CADDY_DATA}/ocsp && systemctl restart caddy")

    def now(self) -> int:
        """The host's clock, for `journalctl --since @SECONDS`."""
        return int(self.sh("date +%s").stdout)

    def journal(self, unit: str, since: int) -> str:
        return self.sh(f"journalctl -u {q(unit)} -o cat --no-pager --since @{since}").stdout

    def ssh_logins(self, since: int) -> int:
        """SSH logins sshd accepted since the host time `since` (every pulumi-command step opens one). Waits a
        second first: a login in the last second must reach the journal to be counted."""
        time.sleep(1)
        return self.journal("ssh", since).count("Accepted publickey")

    def authfile(self, name: str, config_json: str) -> str:
        """Write a Docker config.json (from stdin) as a 0600 file; returns its path."""
        path = f"{AUTH_DIR}/{name}.json"
        self.sh(f"umask 077 && cat > {q(path)}", stdin=config_json)
        return path

    def make_image(self, name: str) -> str:
        """A tiny single-layer image in the host's Docker, with unique content; returns its reference."""
        ref = f"e2e/{name}:1"
        self.sh(
            f'd=$(mktemp -d) && printf \'%s %s\\n\' {q(name)} "$(date +%s%N)" > "$d/hello.txt" && '
            f'tar -C "$d" -c . | docker import - {q(ref)} >/dev/null && rm -rf "$d"'
        )
        return ref

    def push(
        self, local_ref: str, repo_tag: str, authfile: str, check: bool = True, retries: int = 0
    ) -> subprocess.CompletedProcess[str]:
        """skopeo copy to the registry. retries: skopeo's --retry-times, which retries network errors (a connection
        closed under it) as `docker push` does, never an answer such as 401."""
        retry = f"--retry-times {retries} " if retries else ""
        return self.sh(
            f"skopeo copy --quiet {retry}--dest-cert-dir {CERT_DIR} --dest-authfile {q(authfile)} "
            f"docker-daemon:{q(local_ref)} docker://{q(f'{self.domain}/{repo_tag}')}",
            check=check,
        )

    def digest(self, repo_ref: str, authfile: str) -> str:
        return self.sh(
            f"skopeo inspect --cert-dir {CERT_DIR} --authfile {q(authfile)} --format '{{{{.Digest}}}}' "
            f"docker://{q(f'{self.domain}/{repo_ref}')}"
        ).stdout.strip()

    def list_tags(self, repo: str, authfile: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh(
            f"skopeo list-tags --cert-dir {CERT_DIR} --authfile {q(authfile)} docker://{q(f'{self.domain}/{repo}')}",
            check=check,
        )

    def k3s_pull(self, repo_ref: str, fresh: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Pull as k3s does (its containerd, the credential from registries.yaml); `fresh` drops a cached copy."""
        ref = f"{self.domain}/{repo_ref}"
        drop = f"k3s ctr images rm {q(ref)} >/dev/null 2>&1 || true; " if fresh else ""
        return self.sh(f"{drop}k3s crictl pull {q(ref)}", check=check)

    def http(
        self, path: str = "/v2/", user: str | None = None, password: str | None = None, method: str = "GET"
    ) -> Http:
        """curl through Caddy with TLS verified against Pebble's roots; the credential goes in on stdin."""
        config = f'user = "{user}:{password}"\n' if user is not None else ""
        out = self.sh(
            f"curl -sS -K - -X {method} -D - -o /tmp/e2e-body --cacert {CERT_DIR}/ca.crt "
            f"https://{q(self.domain)}{q(path)}; echo; cat /tmp/e2e-body; rm -f /tmp/e2e-body",
            stdin=config,
        ).stdout
        head, _, body = out.partition("\r\n\r\n")
        lines = head.splitlines()
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return Http(status, headers, body.strip())

    def inspect_container(self, name: str = "registry") -> dict:
        return json.loads(self.sh(f"docker inspect {q(name)}").stdout)[0]

    def wait_registry(self, timeout: float = 60) -> None:
        """Until the registry answers on loopback and Caddy answers for the domain."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.sh(
                "curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ && "
                f"curl -sS -o /dev/null -w '%{{http_code}}' --cacert {CERT_DIR}/ca.crt https://{q(self.domain)}/v2/",
                check=False,
            )
            if res.returncode == 0 and res.stdout.strip() == "401":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"registry/site not back after {timeout:.0f}s: {res.stdout} {res.stderr}")
            time.sleep(0.5)

    def starts(self) -> list[tuple[str, str]]:
        """k3s stand-in starts: (ISO time with ns, sha256 of registries.yaml)."""
        text = self.sh(f"cat {STARTS_LOG} 2>/dev/null || true").stdout
        return [tuple(line.split()[:2]) for line in text.splitlines() if line.strip()]  # type: ignore[misc]

    def caddy_state(self) -> dict[str, str]:
        """What a restart or reload of Caddy would change."""
        show = self.sh("systemctl show caddy -p MainPID -p ActiveEnterTimestamp -p NRestarts").stdout
        state = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        state["config"] = self.sh("curl -fsS http://localhost:2019/config/").stdout
        state["loads"] = self.sh(
            'journalctl -u caddy -o cat --no-pager | grep -c \'"uri":"/load"\' || true'
        ).stdout.strip()
        return state

    def sha256(self, path: str) -> str:
        return self.sh(f"sha256sum {q(path)}").stdout.split()[0]


@dataclass
class ProcessSampler:
    """Samples the host's process table (`ps -ww -eo args`) about every 50 ms while active."""

    host: TestHost
    samples: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None
    _stop_file: str = ""

    def __enter__(self) -> ProcessSampler:
        self._stop_file = f"/run/e2e-sampler-{time.monotonic_ns()}.stop"
        loop = (
            f"while [ ! -e {self._stop_file} ]; do ps -ww -eo args; echo '@@sample@@'; sleep 0.05; done; "
            f"rm -f {self._stop_file}"
        )
        self._proc = subprocess.Popen(
            ["docker", "exec", self.host.name, "sh", "-c", loop], stdout=subprocess.PIPE, text=True, errors="replace"
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.2)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        current: list[str] = []
        for line in self._proc.stdout:
            if line.strip() == "@@sample@@":
                self.samples.append("".join(current))
                current = []
            else:
                current.append(line)

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self.host.exec(f"touch {self._stop_file}")
        assert self._proc is not None and self._thread is not None
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._thread.join(timeout=5)


def stack_config(host: TestHost, **overrides: Any) -> dict[str, Any]:
    """Stack config for a program run against the test host: its SSH details, the test domain and Pebble."""
    return {
        "host": host.ssh_host,
        "sshUser": host.user,
        **host.engine_settings(),
        "domain": host.domain,
        "acmeCaUrl": host.acme_ca_url,
        "acmeCaRoot": host.acme_ca_root,
        "acmeEmail": "ops@example.com",
        "registryCaFile": REGISTRY_CA_FILE,
        **overrides,
    }
