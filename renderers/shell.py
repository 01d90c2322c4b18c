"""What every rendered shell step shares: one quoting helper, `set -eu`, running as root, host tools by here-document."""

from __future__ import annotations

import shlex
from pathlib import Path

from renderers import shipped

q = shlex.quote


def as_root(script: str, prefix: str) -> str:
    """The command string that runs `script` with POSIX sh as root (prefix is '' or 'sudo -n ')."""
    return f"{prefix}sh -c {q(script)}"


def script(*lines: str) -> str:
    """A POSIX sh script that stops at the first failing command or unset variable."""
    return "\n".join(["set -eu", *lines]) + "\n"


def host_tool(path: str, *args: str, suffix: str = "") -> str:
    """Run host/PATH with the host's python3; its source travels in a here-document."""
    source = shipped.text(path)
    marker = f"END_OF_{Path(path).stem.upper()}"
    return f"python3 - {' '.join(args)} <<'{marker}'{suffix}\n{source.rstrip()}\n{marker}"
