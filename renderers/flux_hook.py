"""The relay's files on the host: the Receiver's secret webhook path (on stdin) and the receiver's address."""

from __future__ import annotations

import hashlib

from renderers.caddyfile import HOOK_DIR
from renderers.shell import q, script

RECEIVER_PATH_PREFIX = "/hook/"


def webhook_path(token: str, receiver: str, namespace: str) -> str:
    """The path Flux's notification-controller serves a Receiver at: /hook/ + hex sha256(token + name + namespace)."""
    return RECEIVER_PATH_PREFIX + hashlib.sha256(f"{token}{receiver}{namespace}".encode()).hexdigest()


def hook_stdin(path: str, upstream: str) -> str:
    """What the files step reads: the path, then host:port of the receiver, one per line."""
    if "\n" in path or "\n" in upstream:
        raise ValueError("the hook path and the receiver address are single lines")
    return f"{path}\n{upstream}\n"


def hook_files_write() -> str:
    """Write HOOK_DIR/path (root:caddy 0640: only Caddy reads it) and HOOK_DIR/upstream from stdin, each replaced
    atomically: Caddy reads them at every request, so a new token needs no reload and no request sees half a file."""
    return script(
        "umask 027",
        f"d={q(HOOK_DIR)}",
        'install -d -m 0750 -o root -g caddy "$d"',
        "IFS= read -r path; IFS= read -r upstream",
        'tmp=$(mktemp "$d/.new.XXXXXX"); trap \'rm -f "$tmp"\' EXIT',
        'printf \'%s\\n\' "$path" > "$tmp"; chown root:caddy "$tmp"; chmod 0640 "$tmp"; mv "$tmp" "$d/path"',
        'tmp=$(mktemp "$d/.new.XXXXXX")',
        'printf \'%s\\n\' "$upstream" > "$tmp"; chown root:caddy "$tmp"; chmod 0640 "$tmp"; mv "$tmp" "$d/upstream"',
        "echo 'flux hook: relay files written'",
    )


def hook_files_remove() -> str:
    """Remove the relay's files (the site without the relay no longer reads them)."""
    return script(f"rm -rf {q(HOOK_DIR)}")
