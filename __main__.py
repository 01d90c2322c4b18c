"""Private registry for a self-hosted k3s cluster: config -> components -> stack outputs."""

import pulumi
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import get_monitor

from components.caddy_site import CaddySite, CaddySiteArgs
from components.credentials import Credentials, CredentialsArgs
from components.flux_hook import FluxHook, FluxHookArgs
from components.flux_secret import FluxSecret, FluxSecretArgs
from components.host import Host, HostArgs
from components.k3s_node import K3sNode, K3sNodeArgs, NodeTrustArgs
from components.k3s_trust import K3sTrust, K3sTrustArgs
from components.maintenance import BackupS3, Maintenance, MaintenanceArgs
from components.registry import CONTAINER, ENV_FILE, RegistryArgs, RegistryContainer, upstream_address
from components.verify import Verify, VerifyArgs, VerifyNode
from renderers.dockerconfigjson import dockerconfigjson
from renderers.registry_env import StorageSpec
from renderers.retention_config import RetentionSpec
from settings.cluster import check_cluster
from settings.load import parse_settings, project_config, secret_config_keys
from settings.model import ConfigError, Settings
from settings.refusals import refusals

raw_config = project_config(pulumi.get_project())
try:
    cfg = parse_settings(raw_config, pulumi.get_project(), refusals(
        raw_config, secret_config_keys(pulumi.get_project(), raw_config), pulumi.get_project(), pulumi.get_stack(),
    ))
    # A cluster that cannot be reached stops the program before it changes the host (unit tests' mocks have none).
    if cfg.flux and cfg.kubeconfig is not None and not isinstance(get_monitor(), MockMonitor):
        check_cluster(cfg.kubeconfig, pulumi.get_project())
except ConfigError as exc:  # the message names each bad setting; a stack trace would only hide it
    raise pulumi.RunError(str(exc)) from None
storage = StorageSpec(
    kind=cfg.storage, endpoint=cfg.s3_endpoint, region=cfg.s3_region, bucket=cfg.s3_bucket or "",
    root_directory=cfg.s3_root_directory, force_path_style=cfg.s3_force_path_style, ca_file=cfg.s3_ca_file,
)

# The cluster's other nodes: each is reached (preflight) before anything changes on any machine.
nodes = [
    K3sNode(f"k3s-{n.name}", K3sNodeArgs(
        node=n.name, address=n.address, port=n.ssh_port or cfg.ssh_port, user=n.ssh_user or cfg.ssh_user,
        private_key=cfg.ssh_private_key, host_key=n.ssh_host_key, service=n.service,
        path=n.registries_file or cfg.k3s_registries_file, registry=cfg.domain, check_host_key=cfg.ssh_host_key_check,
    ))
    for n in cfg.nodes
]# Push-to-deploy: the registry notifies a loopback relay in Caddy, which adds the Receiver's secret path.
hook_port = cfg.flux_hook_port if cfg.flux and cfg.flux_receiver else None

host = Host("host", HostArgs(
    address=cfg.host, port=cfg.ssh_port, user=cfg.ssh_user, private_key=cfg.ssh_private_key,
    host_key=cfg.ssh_host_key, data_dir=cfg.data_dir, require_k3s=cfg.k3s_trust, k3s_service=cfg.k3s_service,
    registry_port=cfg.registry_port, container=CONTAINER, domain=cfg.domain, caddyfile=cfg.caddyfile,
    registries_file=cfg.k3s_registries_file, replicas=cfg.registry_replicas, after=[n.preflight for n in nodes],
    check_host_key=cfg.ssh_host_key_check, backup_dir=cfg.backup_dir if cfg.storage == "filesystem" else None,
))
creds = Credentials("credentials", CredentialsArgs(
    push_user=cfg.push_user, pull_user=cfg.pull_user, length=cfg.password_length, rotation=cfg.credential_rotation,
    kept_push_password=pulumi.Output.secret(cfg.existing_push_password) if cfg.existing_push_password else None,
))
# Order: the site goes live first; the container swap, the trust file, the k3s restart and the Flux secret follow
# only once it accepts the credentials they use.
site = CaddySite("caddy-site", CaddySiteArgs(
    host=host, upstream=upstream_address(cfg.registry_port), domain=cfg.domain, acme_email=cfg.acme_email,
    push_user=cfg.push_user, push_hash=creds.push_hash, pull_user=cfg.pull_user, pull_hash=creds.pull_hash,
    allowlist=cfg.allowlist, acme_ca_url=cfg.acme_ca_url, acme_ca_root=cfg.acme_ca_root,
    caddyfile=cfg.caddyfile, site_file=cfg.caddy_site_file,
    previous_push_hash=creds.previous_push_hash, previous_pull_hash=creds.previous_pull_hash,
    rotated_at=creds.rotated_at, grace_seconds=cfg.credential_grace_period, hook_port=hook_port,
))
# A rotation is a handover: every client gets the new passwords only once the site accepts them (site.live),
# and the site refuses the previous ones only once the trust file, k3s and the Flux secret switched (site.finish).
# The container swap also waits for the site (site.handover): pulls are held by the site's retries across it.
registry = RegistryContainer("registry", RegistryArgs(
    host=host, image=cfg.registry_image, port=cfg.registry_port, http_secret=creds.http_secret,
    distribution=cfg.distribution, storage=storage, replicas=cfg.registry_replicas,
    s3_access_key=pulumi.Output.secret(cfg.s3_access_key or ""), s3_secret_key=pulumi.Output.secret(cfg.s3_secret_key or ""),
    notify_url=f"http://127.0.0.1:{hook_port}/" if hook_port else None, after=[site.handover],
))
pull_password = site.live(creds.pull_password)
push_password = site.live(creds.push_password)
trust = K3sTrust("k3s-trust", K3sTrustArgs(
    host=host, registry=cfg.domain, username=cfg.pull_user, password=pull_password,
    path=cfg.k3s_registries_file, service=cfg.k3s_service, ca_file=cfg.registry_ca_file, after=[site.handover],
    rolling=bool(nodes),
)) if cfg.k3s_trust else None
# Rolling restarts: each node restarts only once the one before it (the server first) is back and pulling.
previous = [trust.back] if trust is not None and trust.back is not None else []
for node in nodes:
    node.trust(NodeTrustArgs(
        username=cfg.pull_user, password=pull_password, ca_file=cfg.registry_ca_file, after=[site.handover],
        restart_after=previous,
    ))
    previous = [node.back]
flux = FluxSecret("flux", FluxSecretArgs(
    registry=cfg.domain, username=cfg.pull_user, password=pull_password, kubeconfig=cfg.kubeconfig,
    context=cfg.kube_context,
    namespace=cfg.flux_namespace, secret_name=cfg.flux_secret_name, images=cfg.flux_images,
    api_version=cfg.flux_api_version, interval=cfg.flux_interval, ca_cert=cfg.flux_ca_cert, after=[site.handover],
    receiver=hook_port is not None, rotation=cfg.credential_rotation, receiver_address=cfg.flux_receiver_address,
)) if cfg.flux else None
if flux is not None and flux.hook_path is not None and flux.receiver_upstream is not None:
    FluxHook("flux-hook", FluxHookArgs(
        host=host, path=flux.hook_path, upstream=flux.receiver_upstream, after=[site.handover],
    ))
site.finish(after=[r for r in (trust, *nodes, flux) if r is not None])
if cfg.verify:
    Verify("verify", VerifyArgs(
        host=host, domain=cfg.domain, push_user=cfg.push_user, push_password=creds.push_password,
        pull_user=cfg.pull_user, pull_password=creds.pull_password, ca_file=cfg.registry_ca_file,
        k3s=trust is not None, allowlist=bool(cfg.allowlist),
        triggers=[
            site.content_sha256, trust.content_sha256 if trust else "", cfg.registry_image, cfg.registry_port,
            cfg.registry_replicas,
            # Where the data lives; appended only when not the default, so existing stacks keep their triggers.
            *([f"{storage.describe()} {cfg.data_dir}"] if (storage.s3 or cfg.data_dir != Settings.data_dir) else []),
        ],
        after=[site, registry, *([trust] if trust else [])],
        nodes=[VerifyNode(n.node, n.remote, n.service, n.content_sha256, n.back) for n in nodes],
    ))
Maintenance("maintenance", MaintenanceArgs(
    host=host, upstream=registry.upstream, container=CONTAINER, image=cfg.registry_image, port=cfg.registry_port,
    env_file=ENV_FILE, gc_schedule=cfg.gc_schedule, gc_delete_untagged=cfg.gc_delete_untagged,
    backup_schedule=cfg.backup_schedule, backup_dir=cfg.backup_dir, backup_keep=cfg.backup_keep,
    backup_min_free_percent=cfg.backup_min_free_percent,
    backup_s3=BackupS3(
        endpoint=cfg.s3_endpoint, region=cfg.s3_region, bucket=cfg.backup_s3_bucket, prefix=cfg.backup_s3_prefix,
        access_key=pulumi.Output.secret(cfg.s3_access_key or ""), secret_key=pulumi.Output.secret(cfg.s3_secret_key or ""),
        ca_file=cfg.s3_ca_file,
    ) if cfg.backup_s3_bucket else None,
    retention=RetentionSpec(
        enabled=cfg.retention, rules=cfg.retention_rules, keep_tags=cfg.retention_keep_tags,
        protect=cfg.retention_protect, k3s=cfg.k3s_trust,
    ),
    distribution=cfg.distribution, storage=storage, replicas=cfg.registry_replicas,
))

pulumi.export("registryHost", cfg.domain)
pulumi.export("registryUrl", cfg.registry_url)
pulumi.export("imagePrefix", f"{cfg.domain}/")
pulumi.export("pushUsername", cfg.push_user)
pulumi.export("pushPassword", push_password)
pulumi.export("dockerConfigJson", pulumi.Output.secret(
    push_password.apply(lambda pw: dockerconfigjson(cfg.domain, cfg.push_user, pw))
))
pulumi.export("pullUsername", cfg.pull_user)
pulumi.export("pullPassword", pull_password)
