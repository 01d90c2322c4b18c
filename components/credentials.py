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
    kept_push_password: pulumi.Input[str] | None = None
    """CI's existing push password (secret), used instead of a generated one until the next rotation."""


BCRYPT_COST = 10
_LAST_SALT_CHAR = ".Oeu"  # the 22nd salt character carries only 2 bits


def bcrypt_salt(chars: str) -> bytes:
    """A bcrypt salt from 22 random letters and digits (kept in state, so the hash is the same on every run)."""
    return f"$2a${BCRYPT_COST:02d}${chars[:21]}{_LAST_SALT_CHAR[ord(chars[21]) % 4]}".encode()


def kept_hash(password: str, salt_chars: str) -> str:
    return verified_hash(password, bcrypt.hashpw(password.encode(), bcrypt_salt(salt_chars)).decode())


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
        if args.kept_push_password is not None:
            self.push_password, self.push_hash = self._kept(f"{name}-push-kept", args, args.kept_push_password)
        self.pull_password, self.pull_hash = self._password(f"{name}-pull", args)
        http = random.RandomPassword(
            f"{name}-http-secret", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        self.http_secret = pulumi.Output.secret(http.result)
        self.register_outputs(
            {"push_hash": self.push_hash, "pull_hash": self.pull_hash, "http_secret": self.http_secret}
        )

    def _kept(
        self, name: str, args: CredentialsArgs, kept: pulumi.Input[str]
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The kept password while the rotation is the one it was first seen with; the generated one after."""
        # Remembers (ignore_changes) the rotation in force when the kept password was first used; its result is the
        # salt of the kept password's hash.
        memo = random.RandomPassword(
            name,
            length=22,
            special=False,
            keepers={"rotation": args.rotation},
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["keepers"]),
        )
        generated = (self.push_password, self.push_hash)

        def choose(v: list) -> tuple[str, str]:
            keepers, salt, password, generated_password, generated_hash = v
            if (keepers or {}).get("rotation") != args.rotation:
                return generated_password, generated_hash
            return password, kept_hash(password, salt)

        chosen = pulumi.Output.all(memo.keepers, memo.result, kept, *generated).apply(choose)
        return pulumi.Output.secret(chosen[0]), pulumi.Output.secret(chosen[1])

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
