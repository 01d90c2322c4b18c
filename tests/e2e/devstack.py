"""The `dev` stack on the disposable local host, for `scripts/dev.sh` (which runs the real CLI on it).

    python -m tests.e2e.devstack prepare [--flux]   create/select the dev stack, point it at the running test host
                                                     (with --flux: at its Kubernetes API too, Flux on)
    python -m tests.e2e.devstack env       shell lines exporting the CLI's environment and DEV_PROJECT
    python -m tests.e2e.devstack reach     how to reach the registry from this machine

Everything lives in `.e2e/pulumi/` (git-ignored): PULUMI_HOME, the `file://` backend, the passphrase file, and a
project folder whose stack file starts as a copy of the committed `Pulumi.dev.yaml` (so `pulumi config set` never
edits a committed file).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from collections.abc import Sequence

from tests.e2e import engine, testhost

BASE = engine.ROOT / ".e2e" / "pulumi"
PROJECT_DIR = BASE / "project"
STACK = "dev"


def _engine() -> engine.Engine:
    return engine.Engine(BASE)


def save_pebble_root(host: testhost.TestHost, path: str) -> None:
    """Write Pebble's issuing roots where registryCaFile points, so k3s's containerd trusts the test ACME CA (Pebble
    makes a new root every boot, as a user's private CA would be installed on their server)."""
    host.exec(f"install -d -m 0755 {shlex.quote(path.rsplit('/', 1)[0])} && pebble-root {shlex.quote(path)}")


def prepare(host_name: str, stack: str = STACK, flux: bool = False) -> engine.Stack:
    host = testhost.attach_host(host_name)
    if host is None:
        raise engine.EngineError(f"test host {host_name} is not running: python -m tests.e2e.testhost up --name {host_name}")
    eng = _engine()
    engine.make_project(PROJECT_DIR)
    stack_file = PROJECT_DIR / f"Pulumi.{stack}.yaml"
    committed = engine.ROOT / f"Pulumi.{stack}.yaml"
    if not stack_file.exists() and committed.exists():
        shutil.copyfile(committed, stack_file)
    s = engine.Stack(eng, stack, PROJECT_DIR)
    s.configure(host.engine_settings())
    if flux:
        # The API through the host's published port, and Pebble's roots (new at every host boot) for the controller.
        s.configure({
            "flux": "true", "kubeconfig": host.kubeconfig(), "fluxCaCert": host.pebble_root(),
            # The host's notification-controller is a service on loopback, not a pod behind the webhook-receiver
            # Service the program would otherwise look up.
            "fluxReceiverAddress": testhost.FLUX_RECEIVER_ADDRESS,
        })
    else:
        s.configure({"flux": "false"})
    config = s.stack.get_all_config()
    ca_file = config.get(f"{engine.PROJECT}:registryCaFile")
    if ca_file and ca_file.value:
        save_pebble_root(host, ca_file.value)
    eng.cli(["stack", "select", stack], cwd=PROJECT_DIR)
    return s


def env_lines() -> str:
    eng = _engine()
    values = {**eng.env(), "DEV_PROJECT": str(PROJECT_DIR)}
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())


def reach(host_name: str) -> str:
    host = testhost.attach_host(host_name)
    if host is None:
        return f"{host_name} is not running"
    return (
        "Reach it (bash): curl -u \"$(bash scripts/dev.sh pulumi stack output pushUsername)\":"
        "\"$(bash scripts/dev.sh pulumi stack output --show-secrets pushPassword)\" "
        f"--cacert <(docker exec {host.name} pebble-root) --resolve {host.domain}:{host.https_port}:127.0.0.1 "
        f"https://{host.domain}:{host.https_port}/v2/_catalog"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "env", "reach"])
    parser.add_argument("--host", default=testhost.DEV_NAME, help=f"test host container (default {testhost.DEV_NAME})")
    parser.add_argument("--stack", default=STACK)
    parser.add_argument("--flux", action="store_true", help="prepare: Flux on, through the host's Kubernetes API")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.host, args.stack, flux=args.flux)
        elif args.command == "env":
            print(env_lines())
        else:
            print(reach(args.host))
    except (engine.EngineError, testhost.TestHostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
