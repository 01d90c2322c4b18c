"""Generated credentials: a push user for CI, a pull-only user for k3s and Flux, and the registry's HTTP secret."""

from __future__ import annotations

from dataclasses import dataclass

import bcrypt
import pulumi
import pulumi_random as random

TYPE = "registry:index:Credentials"


@dataclass(frozen=True)
class CredentialsArgs:
    push_user: str
    """Push principal (CI)."""
    pull_user: str
    """Pull-only principal (k3s, Flux)."""
    length: int
    """Password length."""
    rotation: str
    """Changing this value generates new passwords for both users."""


def verified_hash(password: str, hashed: str) -> str:
    """Return `hashed` after checking it matches `password`; a mismatch would lock every client out."""
    if not bcrypt.checkpw(password.encode(), hashed.encode()):
        raise ValueError("the stored bcrypt hash does not match its password; refusing to deploy it")
    return hashed


class Credentials(pulumi.ComponentResource):
    """Owns the generated passwords; their bcrypt hashes come from state, so they never change between runs."""

    push_password: pulumi.Output[str]
    push_hash: pulumi.Output[str]
    pull_password: pulumi.Output[str]
    pull_hash: pulumi.Output[str]
    http_secret: pulumi.Output[str]

    def __init__(self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self.push_password, self.push_hash = self._password(f"{name}-push", args)
        self.pull_password, self.pull_hash = self._password(f"{name}-pull", args)
        http = random.RandomPassword(
            f"{name}-http-secret", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        self.http_secret = pulumi.Output.secret(http.result)
        self.register_outputs(
            {"push_hash": self.push_hash, "pull_hash": self.pull_hash, "http_secret": self.http_secret}
        )

    def _password(self, name: str, args: CredentialsArgs) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        password = random.RandomPassword(
            name,
            length=args.length,
            special=False,
            keepers={"rotation": args.rotation},
            opts=pulumi.ResourceOptions(parent=self),
        )
        hashed = pulumi.Output.all(password.result, password.bcrypt_hash).apply(lambda v: verified_hash(v[0], v[1]))
        return pulumi.Output.secret(password.result), pulumi.Output.secret(hashed)
