"""A small reader for Go CPU profiles (gzip'd profile.proto, as served by /debug/pprof/profile), no `go tool` needed.

Only the fields a top-N summary needs are decoded: samples (location ids and values), locations (their line
entries' function ids; the first entry is the innermost, inlined, function), functions (name string index) and
the string table.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of one message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield num, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield num, wire, buf[pos:pos + length]
            pos += length
        elif wire == 1:
            yield num, wire, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == 5:
            yield num, wire, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field: packed (bytes) or one unpacked varint."""
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class Profile:
    sample_types: list[tuple[str, str]]
    samples: list[tuple[list[int], list[int]]]
    """(location ids leaf first, values)"""
    location_functions: dict[int, list[str]]
    """location id -> function names, innermost first"""
    duration_ns: int = 0
    flat: Counter[str] = field(default_factory=Counter)
    cum: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def value_index(self, kind: str = "cpu") -> int:
        for i, (typ, _unit) in enumerate(self.sample_types):
            if typ == kind:
                return i
        return len(self.sample_types) - 1

    def stacks(self) -> Iterator[tuple[list[str], int]]:
        """(function names leaf first, value in the profile's unit) per sample."""
        idx = self.value_index()
        for locs, values in self.samples:
            names = [name for loc in locs for name in self.location_functions.get(loc, ["?"])]
            yield names, values[idx]

    def summarise(self) -> None:
        self.flat.clear()
        self.cum.clear()
        self.total = 0
        for names, value in self.stacks():
            self.total += value
            if names:
                self.flat[names[0]] += value
            for name in set(names):
                self.cum[name] += value


def parse(data: bytes) -> Profile:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    raw_types: list[tuple[int, int]] = []
    samples: list[tuple[list[int], list[int]]] = []
    loc_fn_ids: dict[int, list[int]] = {}
    fn_names: dict[int, int] = {}
    duration = 0
    for num, _wire, value in _fields(data):
        if num == 1 and isinstance(value, bytes):  # sample_type
            t = {n: v for n, _, v in _fields(value)}
            raw_types.append((int(t.get(1, 0)), int(t.get(2, 0))))
        elif num == 2 and isinstance(value, bytes):  # sample
            locs: list[int] = []
            vals: list[int] = []
            for n, _, v in _fields(value):
                if n == 1:
                    locs += _ints(v)
                elif n == 2:
                    vals += [_signed(x) for x in _ints(v)]
            samples.append((locs, vals))
        elif num == 4 and isinstance(value, bytes):  # location
            loc_id, fns = 0, []
            for n, _, v in _fields(value):
                if n == 1:
                    loc_id = int(v)
                elif n == 4 and isinstance(v, bytes):  # line
                    fns += [int(lv) for ln, _, lv in _fields(v) if ln == 1]
            loc_fn_ids[loc_id] = fns
        elif num == 5 and isinstance(value, bytes):  # function
            f = {n: v for n, _, v in _fields(value)}
            fn_names[int(f.get(1, 0))] = int(f.get(2, 0))
        elif num == 6 and isinstance(value, bytes):  # string_table
            strings.append(value.decode("utf-8", "replace"))
        elif num == 10 and isinstance(value, int):  # duration_nanos
            duration = value
    location_functions = {
        loc: [strings[fn_names.get(fid, 0)] for fid in fids] or ["?"] for loc, fids in loc_fn_ids.items()
    }
    profile = Profile(
        sample_types=[(strings[t], strings[u]) for t, u in raw_types],
        samples=samples,
        location_functions=location_functions,
        duration_ns=duration,
    )
    profile.summarise()
    return profile


# Buckets for "what kind of work": the stack is read from the leaf up and the first function that matches any rule
# decides (a memmove counts as copying wherever it is called from; see the cumulative list for the callers).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("bcrypt (basic_auth)", ("crypto/bcrypt", "crypto/blowfish")),
    ("TLS record crypto (AES-GCM)", ("crypto/aes", "crypto/cipher", "crypto/internal/fips140/aes",
                                     "gcmAes", "crypto/internal/fips140/aes/gcm")),
    ("TLS other", ("crypto/tls", "crypto/ecdsa", "crypto/internal/fips140/ecdsa", "crypto/internal/fips140/nistec",
                   "crypto/sha256", "crypto/internal/fips140/sha256")),
    ("compression", ("compress/flate", "compress/gzip", "klauspost/compress")),
    ("garbage collector", ("runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.markroot", "runtime.scanobject",
                           "runtime.bgsweep", "runtime.bgscavenge")),
    ("syscalls (socket read/write)", ("syscall.Syscall", "syscall.RawSyscall", "internal/runtime/syscall",
                                     "runtime/internal/syscall", "syscall.read", "syscall.write")),
    ("scheduler / netpoll / idle", ("runtime.schedule", "runtime.findRunnable", "runtime.netpoll", "runtime.futex",
                                    "runtime.usleep", "runtime.mcall", "runtime.park_m", "runtime.notesleep",
                                    "runtime.stopm", "runtime.epollwait")),
    ("memory copy (memmove)", ("runtime.memmove",)),
    ("allocation", ("runtime.mallocgc", "runtime.memclrNoHeapPointers")),
    ("HTTP/2 framing", ("http2", "golang.org/x/net/http2")),
]


def categorise(profile: Profile) -> Counter[str]:
    buckets: Counter[str] = Counter()
    for names, value in profile.stacks():
        chosen = "other"
        for name in names:
            hit = next((label for label, keys in CATEGORIES if any(k in name for k in keys)), None)
            if hit is not None:
                chosen = hit
                break
        buckets[chosen] += value
    return buckets


def report(profile: Profile, top: int = 25, title: str = "CPU profile") -> str:
    total = profile.total or 1
    secs = profile.total / 1e9
    wall = profile.duration_ns / 1e9
    lines = [f"{title}: {secs:.2f} s of CPU samples over {wall:.1f} s"]
    lines.append("  by category (whole stack, first match from the leaf):")
    for label, value in categorise(profile).most_common():
        lines.append(f"    {100 * value / total:5.1f}%  {label}")
    lines.append(f"  top {top} functions by self time (flat%, cum%):")
    for name, value in profile.flat.most_common(top):
        lines.append(f"    {100 * value / total:5.1f}% {100 * profile.cum[name] / total:5.1f}%  {name}")
    lines.append(f"  top {top} functions by cumulative time (cum%), runtime entry points left out:")
    shown = 0
    for name, value in profile.cum.most_common():
        if name.startswith(("runtime.goexit", "runtime.main", "runtime.mstart", "runtime.systemstack")):
            continue
        lines.append(f"    {100 * value / total:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)
