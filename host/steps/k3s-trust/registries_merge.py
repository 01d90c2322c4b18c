"""Merge the program's entries into k3s's registries.yaml, keeping every other line as it was.

Runs on the host (python3, standard library; PyYAML when present double-checks the result) and here (render.py).
    python3 registries_merge.py merge|remove CURRENT_FILE OWNED_JSON OUT_FILE
OWNED_JSON is {"configs": {"<registry>": {...}}}; OUT_FILE is written, or removed when nothing would be left.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from typing import Any

HEADER = "# Managed by the registry Pulumi program.\n"
_SECTION = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[A-Za-z_][\w-]*)[ \t]*:[ \t]*(?P<rest>.*?)[ \t]*$""")
_CHILD = re.compile(
    r"""^(?P<indent>[ ]+)(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s#'"](?:[^:#]|:(?=\S))*?)[ \t]*:(?:[ \t]+(?P<rest>.*?))?[ \t]*$"""
)
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class MergeError(ValueError):
    """The file is not in a shape this tool edits line by line."""


def _scalar(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else json.dumps(key)


def _unquote(key: str) -> str:
    if key.startswith('"'):
        return str(json.loads(key))
    if key.startswith("'"):
        return key[1:-1].replace("''", "'")
    return key


def emit(value: dict[str, Any], indent: int) -> list[str]:
    """Block-style YAML lines for a mapping of strings, booleans and mappings."""
    lines = []
    for key, item in value.items():
        pad = " " * indent
        if isinstance(item, dict):
            lines.append(f"{pad}{_key(key)}:\n")
            lines.extend(emit(item, indent + 2))
        elif isinstance(item, bool):
            lines.append(f"{pad}{_key(key)}: {'true' if item else 'false'}\n")
        else:
            lines.append(f"{pad}{_key(key)}: {_scalar(str(item))}\n")
    return lines


def render(owned: dict[str, dict[str, Any]]) -> str:
    """A new registries.yaml holding only the program's entries."""
    lines = [HEADER]
    for section, entries in owned.items():
        lines.append(f"{_key(section)}:\n")
        lines.extend(emit(entries, 2))
    return "".join(lines)


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _sections(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Top-level keys -> (index of the key line, index after the section's last content line)."""
    starts = []
    for i, line in enumerate(lines):
        if line.startswith(("---", "...", "%")):
            raise MergeError("document markers or directives")
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise MergeError("tab indentation")
        if _is_content(line) and not line[0].isspace():
            match = _SECTION.match(line.rstrip("\n"))
            if not match:
                raise MergeError(f"top-level line not of the form `key:`: {line.strip()[:40]!r}")
            starts.append((i, _unquote(match["key"])))
    found = {}
    for n, (i, key) in enumerate(starts):
        stop = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        end = i + 1
        for j in range(i + 1, stop):
            if _is_content(lines[j]):
                end = j + 1
        if key in found:
            raise MergeError(f"duplicate top-level key {key}")
        found[key] = (i, end)
    return found


def _children(lines: list[str], start: int, end: int) -> tuple[int, dict[str, tuple[int, int]]]:
    """Entries of a block mapping section: (their indentation, key -> (first line, after last content line))."""
    content = [j for j in range(start + 1, end) if _is_content(lines[j])]
    if not content:
        return 2, {}
    indent = len(lines[content[0]]) - len(lines[content[0]].lstrip(" "))
    keys = []
    for j in content:
        width = len(lines[j]) - len(lines[j].lstrip(" "))
        if width < indent:
            raise MergeError("uneven indentation")
        if width == indent:
            match = _CHILD.match(lines[j].rstrip("\n"))
            if not match:
                raise MergeError(f"entry line not of the form `key:`: {lines[j].strip()[:40]!r}")
            keys.append((j, _unquote(match["key"].strip())))
    children = {}
    for n, (j, key) in enumerate(keys):
        stop = keys[n + 1][0] if n + 1 < len(keys) else end
        last = max(k for k in content if j <= k < stop)
        if key in children:
            raise MergeError(f"duplicate entry {key}")
        children[key] = (j, last + 1)
    return indent, children


def _edit(text: str, owned: dict[str, dict[str, Any]], remove: bool) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for section, entries in owned.items():
        sections = _sections(lines)
        if section not in sections:
            if not remove:
                lines += [f"{_key(section)}:\n", *emit(entries, 2)]
            continue
        start, end = sections[section]
        match = _SECTION.match(lines[start].rstrip("\n"))
        if match is None:
            raise MergeError(f"`{section}` line not understood")
        value = match["rest"].split("#", 1)[0].strip()
        if value not in ("", "{}"):
            raise MergeError(f"`{section}` is not a block mapping")
        if value == "{}":
            if remove:
                continue
            lines[start] = f"{_key(section)}:\n"
        removed = False
        for key, entry in entries.items():
            indent, children = _children(lines, start, end)
            new = [] if remove else emit({key: entry}, indent)
            if key in children:
                first, after = children[key]
                lines[first:after] = new
                removed = True
            elif not remove:
                lines[end:end] = new
            start, end = _sections(lines)[section]
        if remove and removed and not _children(lines, start, end)[1]:
            del lines[start]
    return "".join(lines)


def expected(current: dict[str, Any] | None, owned: dict[str, dict[str, Any]], remove: bool) -> dict[str, Any]:
    """The parsed document the edit must produce."""
    result = copy.deepcopy(current or {})
    for section, entries in owned.items():
        if remove:
            mapping = result.get(section)
            if isinstance(mapping, dict) and any(key in mapping for key in entries):
                for key in entries:
                    mapping.pop(key, None)
                if not mapping:
                    del result[section]
        else:
            result[section] = {**(result.get(section) or {}), **entries}
    return result


def _yaml() -> Any:
    """PyYAML if the host has it (Ubuntu and Debian servers do: cloud-init needs it), else None."""
    try:
        return importlib.import_module("yaml")
    except ImportError:
        return None


def merge(current: str | None, owned: dict[str, dict[str, Any]], remove: bool = False) -> tuple[str | None, str]:
    """(new text or None when nothing is left, how it was done). Other entries, keys and comments stay."""
    if current is None or not current.strip():
        return (None, "absent") if remove else (render(owned), "new file")
    yaml = _yaml()
    parsed = yaml.safe_load(current) if yaml else None
    if yaml and parsed is not None and not isinstance(parsed, dict):
        raise MergeError("the top level is not a mapping")
    if yaml and parsed is not None and expected(parsed, owned, remove) == parsed:
        return current, "already up to date"
    try:
        text = _edit(current, owned, remove)
        how = "merged line by line"
        if yaml and (yaml.safe_load(text) or {}) != expected(parsed, owned, remove):
            raise MergeError("the line-by-line edit did not give the expected document")
    except MergeError as exc:
        if not yaml:
            raise MergeError(f"{exc}; install python3-yaml so the file can be rewritten") from exc
        text = yaml.safe_dump(expected(parsed, owned, remove), sort_keys=False, default_flow_style=False)
        how = f"rewritten with PyYAML, comments and formatting not kept ({exc})"
    if not any(_is_content(line) for line in text.splitlines()):
        return None, how
    return text, how


def main(argv: list[str]) -> int:
    mode, current_file, owned_file, out_file = argv
    try:
        with open(current_file) as fh:
            current: str | None = fh.read()
    except FileNotFoundError:
        current = None
    with open(owned_file) as fh:
        owned = json.load(fh)
    try:
        text, how = merge(current, owned, remove=mode == "remove")
    except MergeError as exc:
        print(f"registries.yaml: cannot merge into {current_file}: {exc}; nothing was changed", file=sys.stderr)
        return 1
    if text is None:
        print(f"registries.yaml: nothing left ({how})")
        return 3
    with open(out_file, "w") as fh:
        fh.write(text)
    print(f"registries.yaml: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
