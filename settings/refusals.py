"""What the values alone cannot show: a secret stored in plaintext, Flux pointed at whatever cluster is current."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

import yaml

SECRET_INPUTS = {
    "sshPrivateKey": " < ~/.ssh/registry_deploy",
    "kubeconfig": " < ~/.kube/k3s.yaml",
    "existingPushPassword": "",
    "s3AccessKey": "",
    "s3SecretKey": "",
}
"""Every secret setting, and what `pulumi config set --secret KEY` reads it from (nothing: it prompts)."""


def fix_command(key: str, stack: str) -> str:
    return f"pulumi config set --secret {key} --stack {stack}{SECRET_INPUTS[key]}"


def plaintext_secrets(raw: Mapping[str, Any], secret_keys: Set[str], project: str, stack: str) -> list[str]:
    """A secret setting with a value the engine did not hand over as a secret was set without --secret: its value is
    in `Pulumi.<stack>.yaml` in clear (and in git once committed). Never shows the value."""
    return [
        f"{project}:{key} is stored in plaintext in Pulumi.{stack}.yaml; accepted: a secret. Fix: `{fix_command(key, stack)}` "
        "(replaces the plaintext value; if that file was ever committed or shared, also replace the credential itself)"
        for key in SECRET_INPUTS
        if raw.get(key) not in (None, "") and key not in secret_keys
    ]


def flux_cluster(raw: Mapping[str, Any], project: str, stack: str, ambient: Callable[[], str | None]) -> list[str]:
    """With Flux on, the cluster must be named: a kubeconfig of the stack's own or a context. The ambient current
    context is whatever kubectl last switched to on the machine that runs `pulumi up`."""
    if str(raw.get("flux", "true")).strip().lower() != "true" or raw.get("kubeconfig") or raw.get("kubeContext"):
        return []
    current = ambient()
    would = f"the ambient kubeconfig's current context {current!r} would be used" if current else "no cluster is named"
    return [
        f"{project}:kubeconfig is not set while flux = true, and neither is kubeContext ({would}); accepted: the "
        f"cluster named explicitly: `{fix_command('kubeconfig', stack)}`, or `pulumi config set kubeContext "
        f"{current or 'CONTEXT'} --stack {stack}` (a context of the ambient kubeconfig), or flux = false"
    ]


def ambient_context(env: Mapping[str, str] | None = None) -> str | None:
    """The current context kubectl would use: the first `current-context` among $KUBECONFIG's files (or
    ~/.kube/config), as kubectl merges them."""
    env = os.environ if env is None else env
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p] or [str(Path.home() / ".kube" / "config")]
    for path in paths:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(document, dict) and document.get("current-context"):
            return str(document["current-context"])
    return None


def refusals(
    raw: Mapping[str, Any], secret_keys: Set[str], project: str, stack: str,
    ambient: Callable[[], str | None] = ambient_context,
) -> list[str]:
    """Every refusal, one line each, naming the setting and the command that fixes it."""
    return plaintext_secrets(raw, secret_keys, project, stack) + flux_cluster(raw, project, stack, ambient)
