"""Generated credentials: a push user for CI, a pull-only user for k3s and Flux, and the registry's HTTP secret."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import bcrypt
import pulumi
import pulumi.dynamic
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


ROLES = ("push", "pull")


def remember(old: Mapping[str, Any] | None, current: Mapping[str, str], now: int) -> dict[str, Any]:
    """The generations record after a run: `current` hashes, the generation before them, and when they changed.

    A changed hash moves the recorded current generation to `previous`; unchanged hashes keep the record as is,
    so re-running an update (or an interrupted rotation) never forgets the generation being handed over.
    """
    current = {role: str(current.get(role, "")) for role in ROLES}
    if old is None:
        return {"current": current, "previous": {role: "" for role in ROLES}, "rotated_at": 0}
    before = {role: str((old.get("current") or {}).get(role, "")) for role in ROLES}
    if before == current:
        return {
            "current": current,
            "previous": {role: str((old.get("previous") or {}).get(role, "")) for role in ROLES},
            "rotated_at": int(old.get("rotated_at") or 0),
        }
    # Only a role whose hash changed has a previous one to hand over.
    previous = {role: before[role] if before[role] != current[role] else "" for role in ROLES}
    return {"current": current, "previous": previous, "rotated_at": now}


def known_hashes(current: Any) -> TypeGuard[Mapping[str, str]]:
    """Whether `current` is a mapping of role -> hash with every value known (the engine hands a dynamic provider an
    unknown value, not a string, for what a preview cannot know yet)."""
    return isinstance(current, Mapping) and all(isinstance(current.get(role, ""), str) for role in ROLES)


class _GenerationsProvider(pulumi.dynamic.ResourceProvider):
    """Keeps the previous generation of bcrypt hashes in state (a RandomPassword forgets it when replaced)."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult("credential-generations", remember(None, props["current"], int(time.time())))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        new = news.get("current")
        if not known_hashes(new):
            # The preview of a rotation: the new hashes are not known until their passwords are generated.
            return pulumi.dynamic.DiffResult(changes=True, replaces=[], delete_before_replace=False)
        changed = remember(None, olds.get("current") or {}, 0)["current"] != remember(None, new, 0)["current"]
        return pulumi.dynamic.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(remember(olds, news["current"], int(time.time())))


class CredentialGenerations(pulumi.dynamic.Resource):
    """The current and the previous bcrypt hash of each user, and when the current ones replaced them."""

    current: pulumi.Output[dict[str, str]]
    previous: pulumi.Output[dict[str, str]]
    rotated_at: pulumi.Output[int]

    def __init__(self, name: str, current: pulumi.Input[dict[str, str]], opts: pulumi.ResourceOptions) -> None:
        super().__init__(
            _GenerationsProvider(),
            name,
            {"current": current, "previous": None, "rotated_at": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["current", "previous"])),
        )


class Credentials(pulumi.ComponentResource):
    """Owns the generated passwords; their bcrypt hashes come from state, so they never change between runs."""

    push_password: pulumi.Output[str]
    push_hash: pulumi.Output[str]
    pull_password: pulumi.Output[str]
    pull_hash: pulumi.Output[str]
    previous_push_hash: pulumi.Output[str]
    """The push hash before the last rotation (empty before the first one): accepted during a handover."""
    previous_pull_hash: pulumi.Output[str]
    rotated_at: pulumi.Output[int]
    """Unix time of the run that last rotated the hashes (0 if never); the grace period counts from it."""
    http_secret: pulumi.Output[str]

    def __init__(self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self.push_password, self.push_hash = self._password(f"{name}-push", args)
        if args.kept_push_password is not None:
            self.push_password, self.push_hash = self._kept(f"{name}-push-kept", args, args.kept_push_password)
        self.pull_password, self.pull_hash = self._password(f"{name}-pull", args)
        generations = CredentialGenerations(
            f"{name}-generations",
            pulumi.Output.secret(pulumi.Output.all(push=self.push_hash, pull=self.pull_hash)),
            pulumi.ResourceOptions(parent=self),
        )
        self.previous_push_hash = pulumi.Output.secret(generations.previous.apply(lambda p: (p or {}).get("push", "")))
        self.previous_pull_hash = pulumi.Output.secret(generations.previous.apply(lambda p: (p or {}).get("pull", "")))
        self.rotated_at = generations.rotated_at.apply(lambda t: int(t or 0))
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
