"""Settings validation (settings/): what is accepted, and that every rejection names the key, the bad value and what
would do; storage, operations and retention settings included."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from settings.load import parse_settings
from settings.model import ConfigError, NodeSpec, Settings, image_major_version
from settings.schema import SCHEMA
from tests.harness import ROOT
from tests.unit.support import (
    ACCESS,
    BACKUP_SCHEDULE,
    BASE,
    DEFAULT_KEEP,
    GC_SCHEDULE,
    HOST,
    NODES,
    PRIVATE_KEY,
    S3,
    SECRET,
)


def rejection(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, "registry")
    return str(info.value)


def test_defaults_plus_the_required_settings_are_accepted() -> None:
    settings = parse_settings(BASE, "registry")
    assert settings == Settings(host=HOST, domain="registry.example.com", acme_email="ops@example.com")
    assert (settings.domain, settings.push_user, settings.pull_user) == ("registry.example.com", "robot_user", "k3s_pull")
    assert (settings.ssh_user, settings.ssh_port, settings.registry_port) == ("ubuntu", 22, 5000)
    assert settings.allowlist == () and settings.k3s_trust and settings.flux


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"host": "2001:db8::10"}, "host", "2001:db8::10"),
        ({"host": "server-1.example.com"}, "host", "server-1.example.com"),
        ({"sshPort": "2222"}, "ssh_port", 2222),
        ({"sshUser": "root"}, "ssh_user", "root"),
        ({"sshPrivateKey": PRIVATE_KEY}, "ssh_private_key", PRIVATE_KEY),
        ({"sshPrivateKey": ""}, "ssh_private_key", None),
        ({"sshHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
         "ssh_host_key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"),
        ({"allowlist": '["10.1.2.3/8", "2001:db8::/32"]'}, "allowlist", ("10.0.0.0/8", "2001:db8::/32")),
        ({"allowlist": ["192.0.2.0/24"]}, "allowlist", ("192.0.2.0/24",)),
        ({"registryImage": "registry@sha256:" + "a" * 64}, "registry_image", "registry@sha256:" + "a" * 64),
        ({"registryImage": "ghcr.io/distribution/distribution:3.0.0"}, "registry_image",
         "ghcr.io/distribution/distribution:3.0.0"),
        ({"k3sTrust": "false"}, "k3s_trust", False),
        ({"flux": "false"}, "flux", False),
        ({"k3sService": "k3s-agent"}, "k3s_service", "k3s-agent"),
        ({"fluxApiVersion": "image.toolkit.fluxcd.io/v1beta2"}, "flux_api_version", "image.toolkit.fluxcd.io/v1beta2"),
        ({"fluxImages": '["app", "team/api"]'}, "flux_images", ("app", "team/api")),
        ({"acmeCaUrl": "https://acme-staging-v02.api.letsencrypt.org/directory"}, "acme_ca_url",
         "https://acme-staging-v02.api.letsencrypt.org/directory"),
        ({"passwordLength": "72"}, "password_length", 72),
        ({"credentialGracePeriod": "0"}, "credential_grace_period", 0),
        ({"credentialGracePeriod": "90"}, "credential_grace_period", 90),
        ({"credentialGracePeriod": "45m"}, "credential_grace_period", 2700),
        ({"credentialGracePeriod": "6h"}, "credential_grace_period", 21600),
        ({"credentialGracePeriod": "30d"}, "credential_grace_period", 30 * 86400),
    ],
)
def test_valid_values_are_parsed(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_settings({**BASE, **raw}, "registry"), field) == expected


USER_RULE = "1-64 characters of letters, digits and ._@- (no ':' or whitespace)"


REJECTIONS = {
    "domain with upper case and underscore": ("domain", "Registry_Host.example.com", "a lower-case DNS name"),
    "domain with one label": ("domain", "localhost", "a lower-case DNS name"),
    "email without domain": ("acmeEmail", "ops@", "an email address such as ops@example.com"),
    "email with space": ("acmeEmail", "ops team@example.com", "an email address"),
    "sshPort zero": ("sshPort", "0", "an integer from 1 to 65535"),
    "sshPort too high": ("sshPort", "65536", "an integer from 1 to 65535"),
    "sshPort not a number": ("sshPort", "twenty-two", "an integer from 1 to 65535"),
    "registryPort privileged": ("registryPort", "80", "an integer from 1024 to 65535"),
    "registryPort too high": ("registryPort", "70000", "an integer from 1024 to 65535"),
    "allowlist bad CIDR": ("allowlist", '["10.0.0.0/33"]', "CIDRs such as 203.0.113.0/24 (bad: '10.0.0.0/33')"),
    "allowlist not a list": ("allowlist", "10.0.0.0/8", "a JSON list of CIDRs"),
    "pushUser with colon": ("pushUser", "ci:bot", USER_RULE),
    "pushUser with space": ("pushUser", "ci bot", USER_RULE),
    "pullUser with colon": ("pullUser", "k3s:pull", USER_RULE),
    "pullUser with tab": ("pullUser", "k3s\tpull", USER_RULE),
    "host with spaces": ("host", "my server", "a DNS name or IP address"),
    "relative dataDir": ("dataDir", "srv/registry", "an absolute normalised path"),
    "dataDir with dot-dot": ("dataDir", "/srv/../etc", "an absolute normalised path"),
    "unknown fluxApiVersion": (
        "fluxApiVersion", "image.toolkit.fluxcd.io/v1alpha1",
        "image.toolkit.fluxcd.io/v1 or image.toolkit.fluxcd.io/v1beta2",
    ),
    "bad image reference": ("registryImage", "Registry:latest!", "an image reference such as registry:2"),
    "bad k3sService": ("k3sService", "k3s; reboot", "a systemd unit name such as k3s or k3s-agent"),
    "bad boolean": ("k3sTrust", "yes", "true or false"),
    "passwordLength too short": ("passwordLength", "8", "an integer from 20 to 72"),
    "acmeCaUrl over http": ("acmeCaUrl", "http://ca.test/dir", "an https:// URL of an ACME directory"),
    "gcSchedule with shell characters": ("gcSchedule", "daily; reboot", "a systemd OnCalendar expression"),
    "backupKeep zero": ("backupKeep", "0", "an integer from 1 to 1000"),
    "grace period in weeks": ("credentialGracePeriod", "1w", "0, or a whole number of seconds, minutes, hours or days"),
    "grace period over 30 days": ("credentialGracePeriod", "31d", "up to 30d"),
    "grace period fractional": ("credentialGracePeriod", "1.5h", "such as 45m, 6h or 2d"),
    "grace period negative": ("credentialGracePeriod", "-1", "0, or a whole number"),
    "fluxCaCert not PEM": ("fluxCaCert", "/etc/ssl/ca.pem", "PEM certificates (-----BEGIN CERTIFICATE-----)"),
}


@pytest.mark.parametrize(("key", "value", "accepted"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_invalid_value_is_rejected_naming_key_value_and_accepted(key: str, value: str, accepted: str) -> None:
    message = rejection({**BASE, key: value})
    assert f"registry:{key} = {value!r} is invalid; accepted: " in message
    assert accepted in message


@pytest.mark.parametrize("key", ["host", "domain", "acmeEmail"])
@pytest.mark.parametrize("given", ["missing", "empty"])
def test_required_setting_missing_or_empty_is_rejected_naming_it(key: str, given: str) -> None:
    raw = {k: v for k, v in BASE.items() if k != key} | ({key: ""} if given == "empty" else {})
    message = rejection(raw)
    assert f"registry:{key} is not set; accepted: " in message
    assert f"`pulumi config set {key} VALUE`; it has no default" in message
    assert sum("is not set" in line for line in message.splitlines()) == 1


def test_unknown_key_is_rejected_listing_known_settings() -> None:
    message = rejection({**BASE, "domian": "registry.example.com"})
    assert "registry:domian is not a known setting; known settings: " in message
    assert all(key in message for key in SCHEMA)


@pytest.mark.parametrize("raw", [{"pushUser": "ci", "pullUser": "ci"}, {"pullUser": "robot_user"}])
def test_same_push_and_pull_user_is_rejected(raw: dict[str, str]) -> None:
    message = rejection({**BASE, **raw})
    assert "registry:pullUser = " in message
    assert "accepted: a name different from pushUser" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("sshPrivateKey", "hunter2-not-a-key"), ("kubeconfig", "hunter2-kube"), ("existingPushPassword", "hunter2\nsecond line")],
)
def test_invalid_secret_value_is_never_echoed(key: str, value: str) -> None:
    message = rejection({**BASE, key: value})
    assert f"registry:{key} = <secret> is invalid; accepted: " in message
    assert "hunter2" not in message


def test_every_error_is_reported_at_once() -> None:
    message = rejection(
        {"domain": "BAD", "sshPort": "0", "allowlist": '["nope"]', "pushUser": "a:b", "surprise": "x"}
    )
    lines = message.splitlines()
    assert lines[0] == "invalid stack configuration:"
    for key in ("domain", "sshPort", "allowlist", "pushUser", "surprise", "host", "acmeEmail"):
        assert sum(f"registry:{key} " in line for line in lines[1:]) == 1, key
    assert len(lines) == 8


def test_same_users_are_reported_together_with_other_errors() -> None:
    # The module promises every problem at once; this rule is only checked when nothing else failed.
    message = rejection({**BASE, "domain": "BAD", "pushUser": "ci", "pullUser": "ci"})
    assert "registry:domain = 'BAD'" in message
    assert "a name different from pushUser" in message


def test_backup_dir_inside_data_dir_is_rejected() -> None:
    message = rejection({**BASE, "dataDir": "/srv/data/registry", "backupDir": "/srv/data/registry/backups"})
    assert "registry:backupDir = '/srv/data/registry/backups' is invalid; accepted: a directory outside dataDir" in message


def test_messages_use_the_project_name() -> None:
    with pytest.raises(ConfigError, match=r"other:sshPort = '0' is invalid"):
        parse_settings({**BASE, "sshPort": "0"}, "other")


def test_nodes_take_the_stack_ssh_settings_unless_they_name_their_own() -> None:
    settings = parse_settings({"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com", "sshPort": "2200", "sshUser": "deploy", "nodes": NODES})
    assert settings.nodes == (
        NodeSpec("agent-1", "10.0.0.21", 2200, "deploy", None, "k3s-agent", "/etc/rancher/k3s/registries.yaml"),
        NodeSpec("server-2", "10.0.0.12", 2222, "root", None, "k3s", "/etc/rancher/k3s/registries.yaml"),
        NodeSpec("agent-3", "agent-3.example.com", 2200, "deploy", None, "k3s-agent", "/etc/k3s/registries.yaml"),
    )
    assert parse_settings({"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com", "nodes": '[{"name": "a", "address": "10.0.0.2"}]'}).nodes[0].name == "a"
    assert parse_settings({"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com"}).nodes == ()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ('{"name": "a"}', "a JSON list of nodes"),
        ([{"name": "a"}], "node 'a': address is missing"),
        ([{"address": "10.0.0.2"}], "name is missing"),
        ([{"name": "Agent_1", "address": "10.0.0.2"}], "node 'Agent_1': name = 'Agent_1' is invalid"),
        ([{"name": "trust", "address": "10.0.0.2"}], "not 'trust'"),
        ([{"name": "a", "address": "10.0.0.2", "service": "k3s-server"}], "service = 'k3s-server' is invalid; accepted: k3s or k3s-agent"),
        ([{"name": "a", "address": "10.0.0.2", "sshPort": 0}], "sshPort = 0 is invalid"),
        ([{"name": "a", "address": "10.0.0.2", "user": "a b"}], "user = 'a b' is invalid"),
        ([{"name": "a", "address": "10.0.0.2", "registriesFile": "etc/r.yaml"}], "registriesFile = 'etc/r.yaml' is invalid"),
        ([{"name": "a", "address": "10.0.0.2", "port": 22}], "node 'a': unknown key 'port'"),
        ([{"name": "a", "address": "10.0.0.2"}, {"name": "a", "address": "10.0.0.3"}], "node name 'a' is used twice"),
        ([{"name": "a", "address": HOST}], f"node 'a' ({HOST}:22) is the registry's own server (k3sTrust) already"),
        ([{"name": "a", "address": "10.0.0.2"}, {"name": "b", "address": "10.0.0.2"}], "node 'b' (10.0.0.2:22) is node 'a' already"),
    ],
)
def test_bad_nodes_are_rejected_naming_the_node_and_key(nodes: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="registry:nodes") as info:
        parse_settings({"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com", "nodes": nodes}, "registry")
    assert message in str(info.value)


def test_the_registry_server_may_be_a_node_when_k3s_trust_is_off() -> None:
    settings = parse_settings({"host": HOST, "domain": "registry.example.com", "acmeEmail": "ops@example.com", "k3sTrust": "false", "nodes": [{"name": "server", "address": HOST}]})
    assert settings.nodes[0].address == HOST


def test_operations_settings_defaults() -> None:
    settings = parse_settings({"host": "192.0.2.1", "domain": "registry.example.com", "acmeEmail": "ops@example.com"})
    assert (settings.verify, settings.gc_delete_untagged) == (True, False)
    assert (settings.gc_schedule, settings.backup_schedule) == (GC_SCHEDULE, BACKUP_SCHEDULE)
    assert (settings.backup_dir, settings.backup_keep) == ("/srv/backups/registry", 7)


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"gcSchedule": ""}, "gc_schedule", ""),
        ({"gcSchedule": "daily"}, "gc_schedule", "daily"),
        ({"gcSchedule": "Mon..Fri *-*-* 01:15:00"}, "gc_schedule", "Mon..Fri *-*-* 01:15:00"),
        ({"backupSchedule": "*-*-* 00/6:00:00"}, "backup_schedule", "*-*-* 00/6:00:00"),
        ({"backupSchedule": ""}, "backup_schedule", ""),
        ({"gcDeleteUntagged": "true"}, "gc_delete_untagged", True),
        ({"verify": "false"}, "verify", False),
        ({"backupKeep": "30"}, "backup_keep", 30),
        ({"backupKeep": 2}, "backup_keep", 2),
        ({"backupDir": "/var/backups/registry"}, "backup_dir", "/var/backups/registry"),
    ],
)
def test_operations_settings_accept(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_settings({**BASE, **raw}), field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gcSchedule": "Sun 03:00; rm -rf /"}, "registry:gcSchedule = 'Sun 03:00; rm -rf /' is invalid; accepted: a systemd OnCalendar"),
        ({"gcSchedule": " daily"}, "registry:gcSchedule = ' daily' is invalid"),
        ({"backupSchedule": "$(reboot)"}, "registry:backupSchedule = '$(reboot)' is invalid; accepted: a systemd OnCalendar"),
        ({"backupSchedule": "daily\nweekly"}, "registry:backupSchedule = 'daily\\nweekly' is invalid"),
        ({"gcSchedule": "..."}, "registry:gcSchedule = '...' is invalid"),
        ({"gcDeleteUntagged": "yes"}, "registry:gcDeleteUntagged = 'yes' is invalid; accepted: true or false"),
        ({"verify": "1"}, "registry:verify = '1' is invalid; accepted: true or false"),
        ({"backupKeep": "0"}, "registry:backupKeep = '0' is invalid; accepted: an integer from 1 to 1000"),
        ({"backupKeep": "many"}, "registry:backupKeep = 'many' is invalid; accepted: an integer from 1 to 1000"),
        ({"backupDir": "backups"}, "registry:backupDir = 'backups' is invalid; accepted: an absolute normalised path"),
        ({"backupDir": "/srv/data/registry/backups"}, "registry:backupDir = '/srv/data/registry/backups' is invalid; accepted: a directory outside dataDir ('/srv/data/registry')"),
        ({"backupDir": "/srv/data/registry"}, "registry:backupDir = '/srv/data/registry' is invalid; accepted: a directory outside dataDir"),
        ({"backupDir": "/srv", "dataDir": "/srv/data/registry"}, "registry:backupDir = '/srv' is invalid; accepted: a directory outside dataDir ('/srv/data/registry') that does not contain it"),
    ],
)
def test_operations_settings_reject(raw: dict[str, Any], message: str) -> None:
    assert message in rejection({**BASE, **raw})


def test_backup_dir_overlap_is_reported_with_other_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"host": "192.0.2.1", "acmeEmail": "ops@example.com", "domain": "BAD", "backupDir": "/srv/data/registry/b"})
    assert "registry:domain = 'BAD'" in str(info.value) and "registry:backupDir" in str(info.value)


def test_operations_settings_are_in_the_project_schema() -> None:
    schema = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    expected_types = {
        "verify": "boolean", "gcSchedule": "string", "gcDeleteUntagged": "boolean",
        "backupSchedule": "string", "backupDir": "string", "backupKeep": "integer",
    }
    for key, typ in expected_types.items():
        assert key in SCHEMA
        assert schema[key]["type"] == typ and schema[key]["description"]
        default = schema[key]["default"]
        parsed = parse_settings({"host": "192.0.2.1", "domain": "registry.example.com", "acmeEmail": "ops@example.com", key: default if isinstance(default, str) else json.dumps(default)})
        assert getattr(parsed, SCHEMA[key][0]) == getattr(parse_settings({"host": "192.0.2.1", "domain": "registry.example.com", "acmeEmail": "ops@example.com"}), SCHEMA[key][0])


def test_retention_is_off_by_default_and_keeps_semver_and_latest() -> None:
    settings = parse_settings({"host": "192.0.2.1", "domain": "registry.example.com", "acmeEmail": "ops@example.com"})
    assert settings.retention is False
    assert settings.retention_rules == (("*", 10),)
    assert settings.retention_keep_tags == DEFAULT_KEEP
    assert settings.retention_protect == ()


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"retention": "true"}, "retention", True),
        ({"retentionRules": '["ruby-demo-app=5", "team/*=20", "*=100"]'}, "retention_rules", (("ruby-demo-app", 5), ("team/*", 20), ("*", 100))),
        ({"retentionRules": ["a?c=1"]}, "retention_rules", (("a?c", 1),)),
        ({"retentionKeepTags": '["release-.*", "stable"]'}, "retention_keep_tags", ("release-.*", "stable")),
        ({"retentionKeepTags": "[]"}, "retention_keep_tags", ()),
        ({"retentionProtect": json.dumps(["sha256:" + "0" * 64])}, "retention_protect", ("sha256:" + "0" * 64,)),
    ],
)
def test_retention_settings_accept(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_settings({**BASE, **raw}), field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"retention": "on"}, "registry:retention = 'on' is invalid; accepted: true or false"),
        ({"retentionRules": '["app"]'}, "registry:retentionRules = '[\"app\"]' is invalid; accepted: a list of PATTERN=N"),
        ({"retentionRules": '["app=0"]'}, "(bad: 'app=0')"),
        ({"retentionRules": '["app=10001"]'}, "how many tags to keep (1-10000)"),
        ({"retentionRules": '["App=3"]'}, "(bad: 'App=3')"),
        ({"retentionRules": '["a;b=3"]'}, "(bad: 'a;b=3')"),
        ({"retentionRules": "[]"}, "registry:retentionRules = '[]' is invalid; accepted: a non-empty JSON list of PATTERN=N"),
        ({"retentionRules": "app=3"}, "accepted: a JSON list of PATTERN=N"),
        ({"retentionKeepTags": '["v[0-9"]'}, "registry:retentionKeepTags = '[\"v[0-9\"]' is invalid; accepted: a list of Python regular expressions"),
        ({"retentionKeepTags": '[""]'}, "(bad: '')"),
        ({"retentionProtect": '["sha256:abc"]'}, "registry:retentionProtect = '[\"sha256:abc\"]' is invalid; accepted: a list of digests such as sha256:<64 lower-case hex>"),
        ({"retentionProtect": json.dumps(["app@sha256:" + "0" * 64])}, "registry:retentionProtect"),
    ],
)
def test_retention_settings_reject(raw: dict[str, Any], message: str) -> None:
    assert message in rejection({**BASE, **raw})


def errors(**raw: str) -> list[str]:
    return [line.strip() for line in rejection({**BASE, **raw}).splitlines()[1:]]


@pytest.mark.parametrize(
    ("image", "major"),
    [("registry:2", 2), ("registry:2.8.3", 2), ("registry:3", 3), ("registry:3.0.0", 3), ("docker.io/library/registry:3.1", 3),
     ("ghcr.io/distribution/distribution:3.0.0-rc.1", 3), ("localhost:5000/registry:3", 3), ("registry", 2),
     ("registry@sha256:" + "a" * 64, 2), ("registry:30", 2), ("localhost:3/registry", 2)],
)  # fmt: skip
def test_the_distribution_version_comes_from_the_tag_unless_set(image: str, major: int) -> None:
    assert image_major_version(image) == major
    assert parse_settings({"host": "h", "domain": "registry.example.com", "acmeEmail": "ops@example.com", "registryImage": image}).distribution == major
    assert parse_settings({"host": "h", "domain": "registry.example.com", "acmeEmail": "ops@example.com", "registryImage": image, "registryMajorVersion": "3"}).distribution == 3


def test_s3_settings_parse_and_default_to_path_style() -> None:
    s = parse_settings({"host": "h", "domain": "registry.example.com", "acmeEmail": "ops@example.com", **S3})
    assert (s.storage, s.s3_endpoint, s.s3_bucket, s.s3_region, s.s3_force_path_style) == (
        "s3", "https://s3.example.com:9000", "registry-data", "us-east-1", True)  # fmt: skip
    assert ACCESS not in repr(s) and SECRET not in repr(s)


def test_s3_storage_needs_a_bucket_and_both_keys_and_says_so() -> None:
    assert errors(storage="s3") == [
        "registry:s3Bucket is not set; accepted: a bucket name, required with storage = 's3'",
        "registry:s3AccessKey is not set; accepted: the S3 credential (set it with --secret), required with storage = 's3'",
        "registry:s3SecretKey is not set; accepted: the S3 credential (set it with --secret), required with storage = 's3'",
    ]


def test_s3_settings_without_s3_storage_are_refused_and_secrets_are_not_shown() -> None:
    found = errors(s3Bucket="b-1", s3SecretKey=SECRET)
    assert found == [
        "registry:s3Bucket = 'b-1' is invalid; accepted: empty while storage = 'filesystem' (set storage to s3 to use it)",
        "registry:s3SecretKey = <secret> is invalid; accepted: empty while storage = 'filesystem' (set storage to s3 to use it)",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"storage": "nfs"}, "registry:storage = 'nfs' is invalid; accepted: filesystem or s3"),
        ({**S3, "s3Endpoint": "s3.example.com"}, "registry:s3Endpoint = 's3.example.com' is invalid; accepted: an http:// or https:// URL"),
        ({**S3, "s3Endpoint": "https://s3.example.com/bucket"}, "registry:s3Endpoint = 'https://s3.example.com/bucket' is invalid"),
        ({**S3, "s3Bucket": "Bad_Bucket"}, "registry:s3Bucket = 'Bad_Bucket' is invalid; accepted: an S3 bucket name"),
        ({**S3, "s3SecretKey": "has space"}, "registry:s3SecretKey = <secret> is invalid; accepted: 1-256 printable"),
        ({**S3, "s3RootDirectory": "registry"}, "registry:s3RootDirectory = 'registry' is invalid; accepted: empty, or a prefix"),
        ({**S3, "s3Endpoint": "http://10.0.0.5:9000", "s3CaFile": "/etc/ca.pem"},
         "registry:s3CaFile = '/etc/ca.pem' is invalid; accepted: a CA file only with an https:// s3Endpoint"),
        ({**S3, "s3ForcePathStyle": "false"}, "registry:s3ForcePathStyle = 'false' is invalid; accepted: true with Distribution 2"),
        ({**S3, "retention": "true"}, "registry:retention = 'true' is invalid; accepted: false with storage = 's3'"),
        ({"registryMajorVersion": "4"}, "registry:registryMajorVersion = '4' is invalid; accepted: 2 or 3"),
        ({"registryReplicas": "0"}, "registry:registryReplicas = '0' is invalid; accepted: an integer from 1 to 8"),
        ({"registryPort": "65534", "registryReplicas": "3"},
         "registry:registryReplicas = '3' is invalid; accepted: at most 2 with registryPort = 65534"),
    ],
)  # fmt: skip
def test_each_bad_storage_or_replica_setting_names_key_value_and_what_is_accepted(raw: dict[str, str], expected: str) -> None:
    found = errors(**raw)
    assert any(line.startswith(expected) for line in found), found


def test_virtual_hosted_addressing_is_fine_on_distribution_3() -> None:
    s = parse_settings({"host": "h", "domain": "registry.example.com", "acmeEmail": "ops@example.com", **S3, "s3ForcePathStyle": "false", "registryImage": "registry:3"})
    assert not s.s3_force_path_style and s.distribution == 3


OFF_SERVER = {"backupS3Bucket": "registry-backups", "s3Endpoint": "https://s3.example.com", "s3AccessKey": "AK", "s3SecretKey": "SK"}


def test_off_server_backups_take_the_s3_settings_with_filesystem_storage() -> None:
    settings = parse_settings({**BASE, **OFF_SERVER, "backupS3Prefix": "registry/prod"})
    assert (settings.storage, settings.backup_s3_bucket, settings.backup_s3_prefix) == ("filesystem", "registry-backups", "registry/prod")
    assert (settings.s3_endpoint, settings.s3_access_key) == ("https://s3.example.com", "AK")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"backupS3Bucket": "b-1x"}, "registry:s3AccessKey is not set; accepted: the S3 credential (set it with --secret), required with backupS3Bucket"),
        ({**OFF_SERVER, "s3Bucket": "data"}, "registry:s3Bucket = 'data' is invalid; accepted: empty while storage = 'filesystem'"),
        ({**OFF_SERVER, "storage": "s3", "s3Bucket": "data"}, "registry:backupS3Bucket = 'registry-backups' is invalid; accepted: empty with storage = 's3'"),
        ({"s3AccessKey": "AK"}, "registry:s3AccessKey = <secret> is invalid; accepted: empty while storage = 'filesystem'"),
    ],
)
def test_off_server_backup_settings_are_refused_naming_the_key(raw: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({**BASE, **raw})
    assert expected in str(info.value)
