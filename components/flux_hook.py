"""The host side of push-to-deploy: the files Caddy's loopback relay reads to reach Flux's Receiver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.host import Host
from renderers import flux_hook as steps

TYPE = "registry:index:FluxHook"


@dataclass(frozen=True)
class FluxHookArgs:
    host: Host
    """Where Caddy runs."""
    path: pulumi.Input[str]
    """The Receiver's webhook path (secret: whoever knows it can make Flux scan)."""
    upstream: pulumi.Input[str]
    """host:port of the notification-controller's receiver, as the host reaches it."""
    after: Sequence[pulumi.Resource] = ()
    """The site with the relay: the files follow it."""


class FluxHook(pulumi.ComponentResource):
    """Owns /etc/caddy/flux-hook on the host: `path` (root:caddy 0640) and `upstream`, read by the relay at every
    request. The path arrives on stdin only; the registry's own config names the relay, never the path."""

    def __init__(self, name: str, args: FluxHookArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        content = pulumi.Output.all(args.path, args.upstream).apply(lambda v: steps.hook_stdin(str(v[0]), str(v[1])))
        self.files = args.host.run(
            f"{name}-files",
            create=steps.hook_files_write(),
            delete=steps.hook_files_remove(),
            stdin=pulumi.Output.secret(content),
            parent=self,
            opts=pulumi.ResourceOptions(depends_on=list(args.after)),
        )
        self.register_outputs({})
