"""The measured clients (skopeo, the Docker CLI) and how a command's wall time and every party's CPU are taken."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import (
    TestCA,
    cpu_seconds,
    group_pids,
    run,
    run_seconds,
)
from bench._fronts import (
    PUSH_USER,
    Credentials,
)
from bench._setups import Endpoint

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
