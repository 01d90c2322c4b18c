"""The registry container step: `docker run` as the program runs it, one container or replicas one at a time."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from renderers.caddyfile import UPSTREAM_DIR, UPSTREAM_SLOTS
from renderers.registry_env import S3_CA_IN_CONTAINER
from renderers.shell import q, script
from settings.model import MAX_REPLICAS

MAINTENANCE_LOCK = "/run/lock/registry-maintenance.lock"
"""Held by every step that stops or recreates the registry container (deploys, GC, backups, restore)."""
DRAIN_ENV = {"REGISTRY_HTTP_DRAINTIMEOUT": "20s"}
"""On SIGTERM the registry finishes requests in flight (a long blob download) before it exits."""
STOP_TIMEOUT = 25
MANAGED_LABEL = "io.registry-program.managed-by"
"""Label on the container the program runs: preflight tells it from a `registry` container made by hand."""


def registry_listen_env(port: int) -> dict[str, str]:
    """Where the registry listens on the host's own network: 127.0.0.1:port, and no debug/metrics listener at all.

    registry:2's config has no `http.debug`, but an image whose config sets one (`:5001`) would listen on every
    host address under host networking; an empty value turns it off whatever the image's config says.
    """
    return {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "REGISTRY_HTTP_DEBUG_ADDR": ""}


def registry_docker_run(
    name: str,
    image: str,
    port: int,
    data_dir: str,
    env_file: str,
    env: Mapping[str, str] | None = None,
    ca_file: str | None = None,
) -> str:
    """The one `docker run` line for the registry container; `env` adds settings (the maintenance window's).

    Host networking with the registry bound to 127.0.0.1: no docker-proxy, no container address and no DOCKER-chain
    ACCEPT rule, so nothing but the server itself can reach it, whatever Docker's version or firewall defaults.
    The data directory is mounted with S3 storage too (empty then): the image's VOLUME would otherwise leave an
    anonymous volume behind at every replacement. `ca_file` (a private S3 endpoint's CA) is mounted read-only.
    """
    listen = registry_listen_env(port)
    if set(listen) & set(env or {}):
        raise ValueError(f"the registry's listen settings are fixed: {sorted(set(listen) & set(env or {}))}")
    settings = {**listen, **(env or {})}
    extra = "".join(f"-e {q(f'{key}={value}')} " for key, value in settings.items())
    ca = f"-v {q(f'{ca_file}:{S3_CA_IN_CONTAINER}:ro')} " if ca_file else ""
    return (
        f"docker run -d --name {q(name)} --label {q(MANAGED_LABEL + '=pulumi')} --restart unless-stopped --network host "
        f"-v {q(f'{data_dir}:/var/lib/registry')} {ca}--env-file {q(env_file)} {extra}{q(image)}"
    )


def _env_file_then_lock(env_file: str) -> list[str]:
    """Write the env file from stdin (0600), then take the maintenance lock: never swap a container under a GC or
    backup window (wait for it to end)."""
    return [
        "umask 077",
        f"install -d -m 0700 {q(posixpath.dirname(env_file))}",
        f"cat > {q(env_file + '.new')}",
        f"mv {q(env_file + '.new')} {q(env_file)}",
        f"exec 9>{q(MAINTENANCE_LOCK)}",
        "flock -w 900 9 || { echo 'a registry maintenance window (GC, backup or restore) still runs after 15 minutes; retry later' >&2; exit 1; }",
    ]


def registry_run(name: str, image: str, port: int, data_dir: str, env_file: str, ca_file: str | None = None) -> str:
    """Write the env file from stdin (0600), then (re)create the container and wait for /v2/."""
    return script(
        *_env_file_then_lock(env_file),
        f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
        *([f"[ -f {q(ca_file)} ] || {{ echo 's3CaFile {ca_file} does not exist on the server' >&2; exit 1; }}"] if ca_file else []),
        f"{registry_docker_run(name, image, port, data_dir, env_file, DRAIN_ENV, ca_file)} >/dev/null",
        "i=0",
        f"until curl -fsS -o /dev/null {q(f'http://127.0.0.1:{port}/v2/')}; do",
        "  i=$((i + 1))",
        f"  if [ \"$i\" -ge 60 ]; then echo 'registry did not answer on 127.0.0.1:{port}/v2/ within 30 s' >&2; docker logs --tail 20 {q(name)} >&2; exit 1; fi",
        "  sleep 0.5",
        "done",
        f"echo {q(f'127.0.0.1:{port}')}",
    )


def registry_remove(name: str) -> str:
    """Stop the container (it drains requests in flight, a long blob download included), then remove it; the data
    directory stays."""
    return script(
        f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
    )


REPLICA_SETTLE_SECONDS = 1
"""After the upstream slots leave a replica, before it stops: a request that read the slots just before is sent."""


def replica_names(container: str, replicas: int) -> list[str]:
    """The replicas' container names: `registry` (as with one replica), then `registry-2`, `registry-3`, ..."""
    return [container, *(f"{container}-{i}" for i in range(2, replicas + 1))]


def replica_ports(port: int, replicas: int) -> list[int]:
    """Where each replica listens on 127.0.0.1: port, port + 1, ..."""
    return [port + i for i in range(replicas)]


def _wait_answers(name: str, port: int, seconds: int = 30) -> list[str]:
    return [
        "i=0",
        f"until curl -fsS -o /dev/null {q(f'http://127.0.0.1:{port}/v2/')}; do",
        "  i=$((i + 1))",
        f"  if [ \"$i\" -ge {seconds * 2} ]; then echo 'registry {name} did not answer on 127.0.0.1:{port}/v2/ within {seconds} s' >&2; docker logs --tail 20 {q(name)} >&2; exit 1; fi",
        "  sleep 0.5",
        "done",
    ]


def _upstream_slots() -> list[str]:
    """`slots PORT...`: point Caddy's upstream slots at those of the replicas that answer, in turn; when none answers
    they stay as they are. Each file is replaced whole (rename), as Caddy reads them at every request; Caddy's user
    reads them (0644: addresses, no secret). Without the slot folder (the site and its slots are gone: a destroy
    removes them while it removes the replicas) it writes nothing."""
    slot = f"{UPSTREAM_DIR}/$i"
    return [
        "slots() {",
        "  live=''",
        "  for port in \"$@\"; do",
        "    if curl -fs -o /dev/null --max-time 2 \"http://127.0.0.1:$port/v2/\"; then live=\"$live $port\"; fi",
        "  done",
        "  [ -n \"$live\" ] || return 0",
        "  i=1",
        f"  while [ \"$i\" -le {UPSTREAM_SLOTS} ]; do",
        "    for port in $live; do",
        f"      [ \"$i\" -le {UPSTREAM_SLOTS} ] || break",
        f"      {{ printf '127.0.0.1:%s\\n' \"$port\" > \"{slot}.new\" && chmod 0644 \"{slot}.new\" && "
        f"mv \"{slot}.new\" \"{slot}\"; }} 2>/dev/null || return 0",
        "      i=$((i + 1))",
        "    done",
        "  done",
        "}",
    ]


def _running(name: str) -> str:
    return f"[ \"$(docker inspect -f '{{{{.State.Running}}}}' {q(name)} 2>/dev/null)\" = true ]"


def registry_run_replicas(
    container: str, image: str, port: int, replicas: int, data_dir: str, env_file: str, ca_file: str | None = None
) -> str:
    """Several replicas: write the env file from stdin (0600), then recreate them one at a time.

    Before a running replica stops, Caddy's upstream slots move to the others that answer, so no new request goes
    to it and the stop only drains what it already has; it is recreated, and once it answers on /v2/ it is back in
    the slots. The slots are files Caddy reads at every request: nothing here reloads Caddy. Replicas beyond
    `replicas` (a scale-down) leave the slots, then stop, last.
    """
    lines = _env_file_then_lock(env_file)
    if ca_file:
        lines.append(f"[ -f {q(ca_file)} ] || {{ echo 's3CaFile {ca_file} does not exist on the server' >&2; exit 1; }}")
    lines += [f"install -d -m 0755 {q(UPSTREAM_DIR)}", *_upstream_slots()]
    names, ports = replica_names(container, replicas), replica_ports(port, replicas)
    for name, replica_port in zip(names, ports, strict=True):
        others = " ".join(str(p) for p in ports if p != replica_port)
        lines += [
            f"if {_running(name)}; then slots {others}; sleep {REPLICA_SETTLE_SECONDS}; fi",
            f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true",
            f"docker rm -f {q(name)} >/dev/null 2>&1 || true",
            f"{registry_docker_run(name, image, replica_port, data_dir, env_file, DRAIN_ENV, ca_file)} >/dev/null",
            *_wait_answers(name, replica_port),
            f"slots {' '.join(str(p) for p in ports)}",
            f"echo {q(f'{name}: 127.0.0.1:{replica_port}')}",
        ]
    for name in replica_names(container, MAX_REPLICAS)[replicas:]:
        lines.append(
            f"if docker inspect {q(name)} >/dev/null 2>&1; then sleep {REPLICA_SETTLE_SECONDS}; "
            f"docker stop -t {STOP_TIMEOUT} {q(name)} >/dev/null 2>&1 || true; "
            f"docker rm -f {q(name)} >/dev/null; echo {q(f'{name}: removed (fewer replicas)')}; fi"
        )
    return script(*lines)


def registry_remove_replicas(container: str, port: int) -> str:
    """Remove every replica container there may be; the data stays.

    Caddy's upstream slots first move to the first replica (if it answers), so the others get no new request; each
    is stopped before it is removed, so it drains requests in flight (a blob download cut mid-stream cannot be
    retried); the first goes last.
    """
    names = replica_names(container, MAX_REPLICAS)
    others = " ".join(q(n) for n in names[1:])
    return script(
        *_upstream_slots(),
        f"slots {port}",
        f"for name in {others}; do",
        "  docker inspect \"$name\" >/dev/null 2>&1 || continue",
        f"  sleep {REPLICA_SETTLE_SECONDS}",
        f"  docker stop -t {STOP_TIMEOUT} \"$name\" >/dev/null 2>&1 || true",
        "  docker rm -f \"$name\" >/dev/null 2>&1 || true",
        "done",
        f"docker stop -t {STOP_TIMEOUT} {q(container)} >/dev/null 2>&1 || true",
        f"docker rm -f {q(container)} >/dev/null 2>&1 || true",
    )
