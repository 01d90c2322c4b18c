"""The kubeconfig check that runs before any resource: what it refuses, and that each refusal names the setting."""

from __future__ import annotations

import pytest

from settings.cluster import check_cluster
from settings.model import ConfigError
from tests.unit.support import free_port


def kubeconfig(server: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters:\n- name: k\n  cluster: {{server: '{server}', insecure-skip-tls-verify: true}}\n"
        "contexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {token: hunter2-token}\n"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("apiVersion: v1\nkind: Config\nclusters: []\n", "it has no clusters"),
        (kubeconfig("10.0.0.1:6443"), "its server '10.0.0.1:6443' is not an http(s) URL"),
        ("apiVersion: v1\ncurrent-context: gone\ncontexts: []\nclusters: []\n", "it has no context 'gone'"),
    ],
)
def test_a_kubeconfig_without_a_usable_server_is_refused_naming_the_setting(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=r"^registry:kubeconfig = <secret> is invalid; accepted: a kubeconfig") as exc:
        check_cluster(text)
    assert reason in str(exc.value)


def test_an_api_that_does_not_answer_is_refused_naming_the_setting_and_the_server_never_the_token() -> None:
    server = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"^registry:kubeconfig = <secret> is invalid") as exc:
        check_cluster(kubeconfig(server), timeout=3)
    assert f"the API at {server} cannot be reached" in str(exc.value)
    assert "hunter2" not in str(exc.value)
