"""The data directory step: created root-only when missing, kept as it is otherwise."""

from __future__ import annotations

from renderers.shell import q, script


def data_dir(path: str) -> str:
    """Create the registry's data directory (root-owned: registry:2 runs as root); an existing one is left as it is.

    registry:2 runs as root, so a hand-made directory's mode and owner already let it in (Docker without user
    namespace remapping); changing them could lock out whoever else reads the directory.
    """
    return script(
        f"if [ -d {q(path)} ]; then echo \"data directory {path} kept as it is ($(stat -c '%U:%G %a' {q(path)}))\"",
        f"else install -d -m 0750 -o root -g root {q(path)}; fi",
        f"echo {q(path)}",
    )
