"""Settings validation: what is accepted, and that every rejection names the key, the bad value and what would do."""

from __future__ import annotations

from typing import Any

import pytest

from settings.load import parse_settings
from settings.model import ConfigError, Settings
from settings.schema import SCHEMA
from tests.unit.support import HOST, PRIVATE_KEY, Programs

BASE = {"host": HOST}


def rejection(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, "registry")
    return str(info.value)


def test_defaults_plus_host_are_accepted() -> None:
    settings = parse_settings(BASE, "registry")
    assert settings == Settings(host=HOST)
    assert (settings.domain, settings.push_user, settings.pull_user) == ("registry.lvs.me.uk", "robot_user", "k3s_pull")
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
    "empty host": ("host", "", "a DNS name or IP address (not empty)"),
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
}


@pytest.mark.parametrize(("key", "value", "accepted"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_invalid_value_is_rejected_naming_key_value_and_accepted(key: str, value: str, accepted: str) -> None:
    message = rejection({**BASE, key: value})
    assert f"registry:{key} = {value!r} is invalid; accepted: " in message
    assert accepted in message


def test_missing_host_is_rejected() -> None:
    assert "registry:host is not set; accepted: a DNS name or IP address (not empty)" in rejection({})


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
    for key in ("domain", "sshPort", "allowlist", "pushUser", "surprise", "host"):
        assert sum(f"registry:{key} " in line for line in lines[1:]) == 1, key
    assert len(lines) == 7


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


def test_program_with_bad_setting_fails_before_registering_anything(programs: Programs) -> None:
    run = programs.run({**BASE, "domain": "Not A Domain", "sshPrivateKey": "hunter2-not-a-key"})
    assert run.error is not None
    assert run.error.startswith("RunError: invalid stack configuration:")  # a clean message, no stack trace
    assert "registry:domain = 'Not A Domain' is invalid" in run.error
    assert "registry:sshPrivateKey = <secret> is invalid" in run.error
    assert "hunter2" not in run.error
    assert run.registrations == []
