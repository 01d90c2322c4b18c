"""Take over an inline site for the registry's domain in the main Caddyfile and make sure the import line is there.

Runs on the host (python3, standard library) inside the validated site install, and here in the tests.
    python3 caddy_takeover.py MAIN_CADDYFILE DOMAIN IMPORT_LINE BACKUP_PATH OUT_FILE
Every other site, snippet and global option stays as written; what was taken over is printed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


class TakeoverError(ValueError):
    """The Caddyfile is not in a shape this tool edits safely."""


@dataclass(frozen=True)
class Block:
    start: int
    """Index of the line that opens the block."""
    end: int
    """Index of the line that closes it."""
    addresses: tuple[str, ...]
    """Tokens before the `{` (empty for the global options block)."""


def tokens(line: str) -> list[str]:
    """A Caddyfile line's tokens: whitespace-separated, quotes kept together, comments dropped."""
    out: list[str] = []
    current = ""
    quote = ""
    escaped = False
    started = False
    for char in line:
        if quote:
            current += char
            if quote == '"' and char == "\\" and not escaped:
                escaped = True
                continue
            if char == quote and not escaped:
                quote = ""
            escaped = False
            continue
        if char.isspace():
            if started:
                out.append(current)
            current, started = "", False
            continue
        if char == "#" and not started:
            break
        if char in "\"`":
            quote = char
        current += char
        started = True
    if quote:
        raise TakeoverError("a quoted token spans lines")
    if started:
        out.append(current)
    return out


def blocks(text: str) -> tuple[list[Block], list[tuple[int, list[str]]]]:
    """Top-level blocks, and top-level lines outside any block (index, tokens)."""
    found: list[Block] = []
    loose: list[tuple[int, list[str]]] = []
    depth = 0
    opened: tuple[int, tuple[str, ...]] = (0, ())
    heredoc = ""
    for i, line in enumerate(text.splitlines()):
        if heredoc:
            if line.strip() == heredoc:
                heredoc = ""
            continue
        toks = tokens(line)
        for tok in toks:
            if tok.startswith("<<") and len(tok) > 2 and tok is toks[-1]:
                heredoc = tok[2:]
        if depth == 0 and toks and toks[-1] == "{":
            opened = (i, tuple(toks[:-1]))
        elif depth == 0 and toks and "{" not in toks:
            loose.append((i, toks))
        for tok in toks:
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth < 0:
                    raise TakeoverError(f"line {i + 1}: unbalanced closing brace")
                if depth == 0:
                    found.append(Block(opened[0], i, opened[1]))
    if depth:
        raise TakeoverError("unbalanced braces")
    return found, loose


def is_address_of(address: str, domain: str) -> bool:
    """Whether a site address means https://DOMAIN (any scheme but http://, port 443 or none, no path)."""
    value = address.rstrip(",").lower()
    if value.startswith("http://"):
        return False
    if value.startswith("https://"):  # not removeprefix: the host may run Python 3.8
        value = value[len("https://") :]
    if "/" in value:
        return False
    host, _, port = value.partition(":")
    return host == domain.lower() and port in ("", "443")


def take_over(text: str, domain: str, import_line: str, backup: str) -> tuple[str, list[str]]:
    """(the new Caddyfile, what was taken over). The program's import line is added when missing."""
    lines = text.splitlines(keepends=True)
    found, loose = blocks(text)
    for i, toks in loose:
        if any(is_address_of(tok, domain) for tok in toks):
            raise TakeoverError(f"line {i + 1}: a site for {domain} without braces; add braces around it first")
    note = f"# {domain}: taken over by the registry Pulumi program (see the import below); the original is in {backup}\n"
    taken = []
    for block in reversed(found):
        ours = [a for a in block.addresses if is_address_of(a, domain)]
        if not ours or block.addresses[0].startswith(("(", "&(")):
            continue
        if block.start > 0 and tokens(lines[block.start - 1]) and tokens(lines[block.start - 1])[-1].endswith(","):
            raise TakeoverError(f"line {block.start}: site addresses over several lines; put them on one line first")
        others = [a.rstrip(",") for a in block.addresses if not is_address_of(a, domain)]
        if others:
            indent = lines[block.start][: len(lines[block.start]) - len(lines[block.start].lstrip())]
            lines[block.start] = f"{indent}{', '.join(others)} {{\n"
            lines.insert(block.start, note)
            taken.append(f"line {block.start + 1}: {domain} removed from the site {' '.join(block.addresses)}")
        else:
            lines[block.start : block.end + 1] = [note]
            taken.append(f"lines {block.start + 1}-{block.end + 1}: the inline site {' '.join(block.addresses)}")
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if import_line not in (line.strip() for line in lines):
        lines.append(f"\n# Added by the registry Pulumi program.\n{import_line}\n")
    return "".join(lines), list(reversed(taken))


def main(argv: list[str]) -> int:
    main_file, domain, import_line, backup, out_file = argv
    with open(main_file) as fh:
        text = fh.read()
    try:
        new, taken = take_over(text, domain, import_line, backup)
    except TakeoverError as exc:
        print(f"{main_file}: cannot take over the site for {domain}: {exc}; nothing was changed", file=sys.stderr)
        return 1
    with open(out_file, "w") as fh:
        fh.write(new)
    for what in taken:
        print(f"{main_file}: taking over {what}; the original file is kept as {backup}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
