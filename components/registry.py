"""The Distribution registry container(s): host networking, listening on 127.0.0.1 only, storing into the host's data
directory or an S3-compatible bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.host import Host, public_digest
from providers.host_state import HostState
from renderers import registry_container as steps
from renderers.registry_env import StorageSpec, render_registry_env

TYPE = "registry:index:RegistryContainer"
CONTAINER = "registry"
ENV_FILE = "/etc/registry/registry.env"


@dataclass(frozen=True)
class RegistryArgs:
    host: Host
    """Where the container runs."""
    image: str
    """Image reference, pinnable by digest."""
    port: int
    """Port the registry listens on, on the server's 127.0.0.1 (Caddy's upstream)."""
    http_secret: pulumi.Input[str]
    """Stable REGISTRY_HTTP_SECRET (secret)."""
    distribution: int = 2
    """Distribution's major version the image runs."""
    replicas: int = 1
    """How many containers share the storage; 1 is the single container `registry`."""
    storage: StorageSpec = StorageSpec()
    """The data directory or an S3-compatible bucket."""
    s3_access_key: pulumi.Input[str] = ""
    """S3 access key id (secret; S3 storage only)."""
    s3_secret_key: pulumi.Input[str] = ""
    """S3 secret key (secret; S3 storage only)."""
    notify_url: str | None = None
    """Push-to-deploy: where the registry sends its manifest-push notifications (the loopback relay); None: none."""
    after: Sequence[pulumi.Resource] = ()
    """The Caddy site step: the container is swapped only once a site that holds pulls across the swap is live."""


def upstream_address(port: int, replicas: int = 1) -> str:
    """Where Caddy reaches the registry: each replica's 127.0.0.1 address, separated by spaces."""
    return " ".join(f"127.0.0.1:{p}" for p in steps.replica_ports(port, replicas))


class RegistryContainer(pulumi.ComponentResource):
    """Owns the `registry` container (with several replicas also `registry-2`, ...) and their env file; the data
    directory belongs to the host and a bucket to its store: both outlive it."""

    upstream: pulumi.Output[str]
    state: HostState
    """Reads the containers and the env file back on refresh."""

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        ca_file = args.storage.ca_file if args.storage.s3 else None
        if args.replicas == 1:
            create = args.host.data_dir.apply(
                lambda data_dir: steps.registry_run(CONTAINER, args.image, args.port, data_dir, ENV_FILE, ca_file)
            )
        else:
            create = args.host.data_dir.apply(
                lambda data_dir: steps.registry_run_replicas(
                    CONTAINER, args.image, args.port, args.replicas, data_dir, ENV_FILE, ca_file
                )
            )
        # The env file (storage settings, the HTTP secret and the S3 credential) arrives on stdin only.
        env_file: pulumi.Output[str] = pulumi.Output.all(args.http_secret, args.s3_access_key, args.s3_secret_key).apply(
            lambda v: render_registry_env(
                str(v[0]), storage=args.storage, distribution=args.distribution, s3_access_key=str(v[1] or ""),
                s3_secret_key=str(v[2] or ""), notify_url=args.notify_url,
            )
        )
        # What refresh reads back: every replica present, running the image with host networking, and the env file
        # (its digest only: it holds the HTTP secret).
        self.state = args.host.observe(f"{name}-state", {
            "files": {ENV_FILE: {"sha256": public_digest(env_file).apply(lambda d: [d]), "mode": "0600", "owner": "root"}},
            "containers": {
                replica: {"running": True, "image": args.image, "network": "host", "restart": "unless-stopped"}
                for replica in steps.replica_names(CONTAINER, args.replicas)
            },
        }, parent=self)
        if args.replicas == 1:
            # A new image or setting replaces the container; removing the old one first frees its name and port.
            container = args.host.run(
                f"{name}-container",
                create=create,
                delete=steps.registry_remove(CONTAINER),
                stdin=pulumi.Output.secret(env_file),
                triggers=[args.image, args.port],
                repairs=self.state.repairs,
                parent=self,
                opts=pulumi.ResourceOptions(delete_before_replace=True, depends_on=list(args.after)),
            )
        else:
            # Several replicas: a new image, env file or count is an update, which recreates them one at a time
            # (no moment without a replica; Caddy's upstream slots follow, without a reload); only a new port
            # replaces them all.
            container = args.host.run(
                f"{name}-container",
                create=create,
                update=create,
                delete=steps.registry_remove_replicas(CONTAINER, args.port),
                stdin=pulumi.Output.secret(env_file),
                triggers=[args.port],
                repairs=self.state.repairs,
                parent=self,
                opts=pulumi.ResourceOptions(delete_before_replace=True, depends_on=list(args.after)),
            )
        self.upstream = container.create.apply(lambda _: upstream_address(args.port, args.replicas))
        self.register_outputs({"upstream": self.upstream})
