"""The pull secret Flux's image-reflector-controller uses, and one ImageRepository per app image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from renderers.dockerconfigjson import dockerconfigjson

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


class FluxSecret(pulumi.ComponentResource):
    """Owns the `kubernetes.io/dockerconfigjson` secret in flux-system, the CA secret when the registry's certificate
    comes from a private CA, and the ImageRepositories that use them."""

    secret_name: pulumi.Output[str]

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
        for image in args.images:
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
        self.register_outputs({"secret_name": self.secret_name})
