"""renderers/registry_env.py: the registry's env file, for the data directory and for S3."""

from __future__ import annotations

from renderers.registry_env import render_registry_env
from tests.unit.support import ACCESS, SECRET, STORAGE


def test_registry_env_file_is_exact() -> None:
    assert render_registry_env("s3cr3t") == (
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry\n"
        "REGISTRY_STORAGE_DELETE_ENABLED=true\n"
        "REGISTRY_HTTP_SECRET=s3cr3t\n"
    )


def test_registry_env_file_uses_the_given_container_root() -> None:
    assert render_registry_env("x", "/data").splitlines()[0] == "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/data"


def test_s3_env_file_replaces_the_storage_section_and_holds_the_credential() -> None:
    env = dict(line.split("=", 1) for line in render_registry_env("h77p", storage=STORAGE, s3_access_key=ACCESS, s3_secret_key=SECRET).splitlines())
    assert env == {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_REGION": "garage",
        "REGISTRY_STORAGE_S3_BUCKET": "reg",
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": "http://127.0.0.1:8333",
        "REGISTRY_STORAGE_S3_SECURE": "false",
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/r",
        "REGISTRY_STORAGE_S3_ACCESSKEY": ACCESS,
        "REGISTRY_STORAGE_S3_SECRETKEY": SECRET,
        "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "inmemory",
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        "REGISTRY_HTTP_SECRET": "h77p",
    }


def test_distribution_3_logs_at_info_and_exports_no_traces() -> None:
    env = render_registry_env("x", distribution=3).splitlines()
    assert "REGISTRY_LOG_LEVEL=info" in env and "OTEL_TRACES_EXPORTER=none" in env
    assert not any(line.startswith(("REGISTRY_LOG_LEVEL", "OTEL_")) for line in render_registry_env("x").splitlines())
