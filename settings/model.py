"""The validated stack settings: one frozen object whose fields mirror the config keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FLUX_API_VERSIONS = ("image.toolkit.fluxcd.io/v1", "image.toolkit.fluxcd.io/v1beta2")
SEMVER_TAG = "v?[0-9]+[.][0-9]+([.][0-9]+)?([-+][0-9A-Za-z.+-]+)?"
"""Semver-looking tags (1.2, v1.2.3, 2.0.0-rc.1+build.5); the dot keeps every hexadecimal commit tag out."""


class ConfigError(ValueError):
    """Raised with every invalid setting listed, one per line."""


K3S_SERVICES = ("k3s", "k3s-agent")


@dataclass(frozen=True)
class NodeSpec:
    """A k3s node other than the registry's own server, reached over SSH with the stack's private key."""

    name: str
    """Short name: resource names (`k3s-<name>-file`) and every message about the node use it."""
    address: str
    """DNS name or IP the program's SSH connection reaches the node at."""
    ssh_port: int | None = None
    """SSH port; the stack's sshPort when None."""
    ssh_user: str | None = None
    """SSH login; the stack's sshUser when None."""
    ssh_host_key: str | None = None
    """Pinned public host key line; unchecked when None."""
    service: str = "k3s-agent"
    """The node's k3s unit: k3s on a server, k3s-agent on an agent."""
    registries_file: str | None = None
    """The node's registries.yaml; the stack's k3sRegistriesFile when None."""


@dataclass(frozen=True)
class Settings:
    """The validated stack settings; field names mirror the config keys (snake_case)."""

    host: str
    """Address of the server (DNS name or IP) reached over SSH."""
    domain: str
    """Public DNS name the registry is served on (required: no stack borrows another organisation's name)."""
    acme_email: str
    """ACME account email (required)."""
    ssh_port: int = 22
    """SSH port."""
    ssh_user: str = "ubuntu"
    """SSH login; privileged steps go through `sudo -n` unless this is root."""
    ssh_private_key: str | None = field(default=None, repr=False)
    """Private key (secret config); the ssh-agent is used when unset."""
    ssh_host_key: str | None = None
    """Pinned public host key line (`ssh-ed25519 AAAA...`); recorded on the first `up` (trust on first use) when unset."""
    ssh_host_key_check: bool = True
    """Verify the host key (pinned or recorded); false only for disposable dev/test hosts."""
    acme_ca_url: str | None = None
    """ACME directory URL (Let's Encrypt staging, or a test CA); Caddy's default when unset."""
    acme_ca_root: str | None = None
    """Path on the host of the PEM root that signs the ACME server's own TLS certificate."""
    push_user: str = "robot_user"
    """Push principal (CI)."""
    pull_user: str = "k3s_pull"
    """Pull-only principal (k3s and Flux)."""
    password_length: int = 32
    """Length of the generated passwords."""
    credential_rotation: str = "1"
    """Change this value to rotate both passwords."""
    existing_push_password: str | None = field(default=None, repr=False)
    """CI's existing push password (secret config), kept through a takeover until the next rotation."""
    credential_grace_period: int = 0
    """Seconds the previous passwords keep working after a rotation; 0 refuses them at the end of the same `up`."""
    registry_image: str = "registry:2"
    """Registry image, pinnable by digest."""
    registry_port: int = 5000
    """Loopback port the registry listens on (the first replica's; replica i listens on port + i - 1)."""
    registry_major_version: int | None = None
    """Distribution 2 or 3 (config paths and defaults differ); None: from the image's tag (3.x tags: 3, else 2)."""
    registry_replicas: int = 1
    """How many registry containers share the storage and the HTTP secret (Caddy load-balances across them)."""
    storage: str = "filesystem"
    """filesystem (dataDir) or s3 (an S3-compatible bucket)."""
    s3_endpoint: str | None = None
    """URL of an S3-compatible server (http(s)://host[:port]); AWS S3 itself when unset."""
    s3_region: str = "us-east-1"
    """Region of the bucket (any name an S3-compatible server accepts)."""
    s3_bucket: str | None = None
    """Bucket holding the registry's data (it must exist)."""
    s3_root_directory: str = ""
    """Prefix inside the bucket ("" for the bucket's root)."""
    s3_force_path_style: bool = True
    """Path-style addressing (endpoint/bucket/key) instead of virtual-hosted (bucket.endpoint/key)."""
    s3_access_key: str | None = field(default=None, repr=False)
    """Access key id (secret config)."""
    s3_secret_key: str | None = field(default=None, repr=False)
    """Secret access key (secret config)."""
    s3_ca_file: str | None = None
    """Path on the host of a PEM CA that signs a private endpoint's TLS certificate."""
    data_dir: str = "/srv/data/registry"
    """Host directory holding the registry's data; never removed."""
    allowlist: tuple[str, ...] = ()
    """CIDRs allowed to reach the site; everyone when empty."""
    caddyfile: str = "/etc/caddy/Caddyfile"
    """The host's main Caddyfile; the program only adds one import line to it."""
    caddy_site_file: str = "/etc/caddy/registry.caddy"
    """The site file the program owns."""
    k3s_trust: bool = True
    """Write the k3s trust file and restart k3s when it changes."""
    k3s_service: str = "k3s"
    """k3s systemd unit: k3s on servers, k3s-agent on agents."""
    k3s_registries_file: str = "/etc/rancher/k3s/registries.yaml"
    """Path of k3s's registries.yaml."""
    registry_ca_file: str | None = None
    """Path on the host (and on every node) of a CA k3s should trust for the registry (private or test CAs)."""
    nodes: tuple[NodeSpec, ...] = ()
    """The cluster's other nodes: each gets the trust file and a restart of its own k3s unit, one node at a time."""
    flux: bool = True
    """Create the Flux pull secret (and image repositories)."""
    kubeconfig: str | None = field(default=None, repr=False)
    """Kubeconfig contents (secret config)."""
    kube_context: str | None = None
    """Context to use (of `kubeconfig`, else of the ambient kubeconfig); with Flux on, this or kubeconfig is required."""
    flux_namespace: str = "flux-system"
    """Namespace of the Flux secret."""
    flux_secret_name: str = "registry-credentials"
    """Name of the Flux secret."""
    flux_api_version: str = "image.toolkit.fluxcd.io/v1"
    """ImageRepository API version (v1 from Flux 2.7, v1beta2 before)."""
    flux_images: tuple[str, ...] = ("ruby-demo-app",)
    """Repositories to create Flux ImageRepositories for."""
    flux_interval: str = "5m"
    """How often Flux scans each repository."""
    flux_ca_cert: str | None = None
    """PEM of the CA that issues the registry's certificate, for the image-reflector-controller (a private ACME CA):
    stored in the `<fluxSecretName>-ca` secret each ImageRepository names as certSecretRef; unset for a public CA."""
    flux_receiver: bool = True
    """Push-to-deploy (with flux): a Flux Receiver the registry notifies on each manifest push, through a loopback
    relay in Caddy that adds the Receiver's secret path; the ImageRepositories then scan at once."""
    flux_receiver_address: str = ""
    """host:port the relay forwards to (the notification-controller's receiver); empty: the ClusterIP of the
    flux-system/webhook-receiver Service, port 80, which a k3s server reaches from the host."""
    flux_hook_port: int = 9393
    """The relay's port on the server's 127.0.0.1, where the registry sends its notifications."""
    verify: bool = True
    """Check the live site through its public name after every change that matters (and the k3s pull path)."""
    gc_schedule: str = "Sun *-*-* 03:00:00"
    """systemd OnCalendar of the garbage-collection timer; empty disables the timer."""
    gc_delete_untagged: bool = False
    """Pass --delete-untagged to garbage-collect (in 2.8 it also deletes the children of multi-arch images)."""
    backup_schedule: str = "*-*-* 02:30:00"
    """systemd OnCalendar of the backup timer; empty disables the timer."""
    backup_dir: str = "/srv/backups/registry"
    """Host directory the backup archives go to (root-only); never removed."""
    backup_keep: int = 7
    """How many backup archives to keep; older ones are deleted after a successful backup."""
    backup_s3_bucket: str | None = None
    """Bucket the archives are also copied to, off the server (with s3Endpoint, s3Region and the s3 keys)."""
    backup_s3_prefix: str = ""
    """Prefix of the copies inside backupS3Bucket."""
    backup_min_free_percent: int = 10
    """A backup that would leave less than this share of backupDir's filesystem free is refused before it starts."""
    retention: bool = False
    """Delete old tags inside the GC window (before garbage-collect), following the retention rules."""
    retention_rules: tuple[tuple[str, int], ...] = (("*", 10),)
    """(repository glob, N): in matching repositories keep the newest N tags; the first matching rule wins."""
    retention_keep_tags: tuple[str, ...] = (SEMVER_TAG, "latest")
    """Regular expressions a whole tag is matched against: matching tags are always kept."""
    retention_protect: tuple[str, ...] = ()
    """Manifest or config digests retention never deletes (images other machines run)."""

    @property
    def registry_url(self) -> str:
        return f"https://{self.domain}"

    @property
    def distribution(self) -> int:
        """The Distribution major version the image runs: the setting, or the image's tag."""
        return self.registry_major_version or image_major_version(self.registry_image)


def image_major_version(image: str) -> int:
    """3 for an image whose tag starts with 3 (registry:3, registry:3.0.0, ...), 2 for every other image."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    return 3 if re.match(r"^v?3(?:[.-]|$)", tag) else 2


MAX_REPLICAS = 8
