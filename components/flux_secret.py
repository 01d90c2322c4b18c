"""The pull secret Flux's image-reflector-controller uses, and one ImageRepository per app image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from renderers.dockerconfigjson import dockerconfigjson
from renderers.flux_hook import webhook_path

TYPE = "registry:index:FluxSecret"


@dataclass(frozen=True)
class FluxSecretArgs:
    registry: str
    """Registry host name (the key of `auths`)."""
    username: str
    """Pull-only principal."""
    password: pulumi.Input[str]
    """Its password (secret)."""
    kubeconfig: pulumi.Input[str] | None
    """Kubeconfig contents (secret), or None for the ambient kubeconfig (then `context` names the cluster)."""
    context: str | None
    """Context to use, of `kubeconfig` or of the ambient kubeconfig."""
    namespace: str
    """Flux's namespace."""
    secret_name: str
    """Name of the dockerconfigjson secret."""
    images: Sequence[str]
    """Repositories to watch with an ImageRepository each."""
    api_version: str
    """ImageRepository API version."""
    interval: str
    """Scan interval."""
    ca_cert: str | None = None
    """PEM of the registry certificate's CA, stored in `<secret_name>-ca` as `ca.crt` for certSecretRef; None for a
    CA the controller's system pool already trusts."""
    after: Sequence[pulumi.Resource] = ()
    """The step that makes the site accepting the pull credential live: the secret changes only after it."""
    receiver: bool = False
    """Push-to-deploy: a Receiver that makes the ImageRepositories scan now, and its token secret."""
    rotation: str = ""
    """The credential rotation: a new value makes a new Receiver token (and so a new webhook path)."""
    receiver_address: str = ""
    """host:port of the notification-controller's receiver as the server reaches it; empty: the ClusterIP of the
    webhook-receiver Service, port 80."""


class FluxSecret(pulumi.ComponentResource):
    """Owns the `kubernetes.io/dockerconfigjson` secret in flux-system, the CA secret when the registry's certificate
    comes from a private CA, and the ImageRepositories that use them."""

    secret_name: pulumi.Output[str]
    hook_path: pulumi.Output[str] | None
    """The Receiver's webhook path (secret), None without a Receiver."""
    receiver_upstream: pulumi.Output[str] | None
    """host:port the relay forwards to, None without a Receiver."""

    def __init__(self, name: str, args: FluxSecretArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        provider = k8s.Provider(
            f"{name}-cluster",
            kubeconfig=pulumi.Output.secret(args.kubeconfig) if args.kubeconfig is not None else None,
            context=args.context,
            # A rotated password updates the secret in place instead of deleting and recreating it.
            enable_secret_mutable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_cluster = pulumi.ResourceOptions(parent=self, provider=provider)
        config_json: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.from_input(args.password).apply(
                lambda pw: dockerconfigjson(args.registry, args.username, pw)
            )
        )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.secret_name, namespace=args.namespace),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": config_json},
            opts=pulumi.ResourceOptions.merge(in_cluster, pulumi.ResourceOptions(depends_on=list(args.after))),
        )
        ca_secret = k8s.core.v1.Secret(
            f"{name}-ca",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{args.secret_name}-ca", namespace=args.namespace),
            type="Opaque",
            string_data={"ca.crt": args.ca_cert},
            opts=in_cluster,
        ) if args.ca_cert else None
        repositories: list[str] = []
        for image in args.images:
            repositories.append(image.replace("/", "-"))
            k8s.apiextensions.CustomResource(
                f"{name}-{image.replace('/', '-')}",
                api_version=args.api_version,
                kind="ImageRepository",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=image.replace("/", "-"), namespace=args.namespace),
                spec={
                    "image": f"{args.registry}/{image}",
                    "interval": args.interval,
                    "secretRef": {"name": secret.metadata.name},
                    **({"certSecretRef": {"name": ca_secret.metadata.name}} if ca_secret else {}),
                },
                opts=in_cluster,
            )
        self.secret_name = secret.metadata.name
        self.hook_path, self.receiver_upstream = (
            self._receiver(name, args, in_cluster, repositories) if args.receiver else (None, None)
        )
        self.register_outputs({"secret_name": self.secret_name})

    def _receiver(
        self, name: str, args: FluxSecretArgs, in_cluster: pulumi.ResourceOptions, repositories: list[str]
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The token secret and a `generic` Receiver for the ImageRepositories: the path is the only credential, so
        it is as secret as the token (Flux derives it from the token, the Receiver's name and namespace)."""
        receiver_name = f"{args.secret_name}-push"
        token = random.RandomPassword(
            f"{name}-receiver-token", length=40, special=False, keepers={"rotation": args.rotation},
            opts=pulumi.ResourceOptions(parent=self),
        )  # fmt: skip
        result: pulumi.Output[str] = token.result
        secret_token: pulumi.Output[str] = pulumi.Output.secret(result)
        token_secret = k8s.core.v1.Secret(
            f"{name}-receiver-secret",
            # The label makes the notification-controller reconcile the Receiver when the token changes, so the new
            # path is served at once (by default a Receiver is reconciled every 10 minutes).
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"{receiver_name}-token", namespace=args.namespace, labels={"reconcile.fluxcd.io/watch": "Enabled"}
            ),
            type="Opaque",
            string_data={"token": secret_token},
            opts=in_cluster,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-receiver",
            api_version="notification.toolkit.fluxcd.io/v1",
            kind="Receiver",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=receiver_name, namespace=args.namespace),
            spec={
                "type": "generic",
                "secretRef": {"name": token_secret.metadata.name},
                "resources": [
                    {"apiVersion": args.api_version, "kind": "ImageRepository", "name": repo} for repo in repositories
                ],
            },
            opts=in_cluster,
        )
        path: pulumi.Output[str] = pulumi.Output.secret(
            result.apply(lambda t: webhook_path(t, receiver_name, args.namespace))
        )
        if args.receiver_address:
            upstream = pulumi.Output.from_input(args.receiver_address)
        else:
            service = k8s.core.v1.Service.get(
                f"{name}-webhook-receiver", f"{args.namespace}/webhook-receiver", opts=in_cluster
            )
            upstream = service.spec.apply(lambda spec: f"{spec.cluster_ip}:80")
        return path, upstream
