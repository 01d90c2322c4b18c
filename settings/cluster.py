"""Whether the kubeconfig setting reaches a Kubernetes API: checked before any resource is registered, so a cluster
the program cannot reach stops it before it changes anything on the host."""

from __future__ import annotations

import base64
import http.client
import ssl
from typing import Any
from urllib.parse import urlsplit

import yaml

from settings.model import ConfigError


def _current_cluster(kubeconfig: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cluster, user) entries of the kubeconfig's current context."""
    try:
        doc = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as exc:
        raise ValueError(f"it is not YAML ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise ValueError("it is not a kubeconfig mapping")

    def named(kind: str, name: str | None) -> dict[str, Any]:
        entries = [e for e in doc.get(kind) or [] if isinstance(e, dict)]
        found = [e for e in entries if name is None or e.get("name") == name]
        if not found:
            raise ValueError(f"it has no {kind[:-1]} {name!r}" if name else f"it has no {kind}")
        inner = found[0].get(kind[:-1])
        return inner if isinstance(inner, dict) else {}

    current = doc.get("current-context")
    if current:
        context = named("contexts", current)
        return named("clusters", context.get("cluster")), named("users", context.get("user")) if context.get("user") else {}
    return named("clusters", None), {}


def _tls_context(cluster: dict[str, Any]) -> ssl.SSLContext:
    """Trust what the kubeconfig says: its CA (data or file), the system's, or nothing (insecure-skip-tls-verify)."""
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=str(cluster["certificate-authority"]))
    return context


def check_cluster(kubeconfig: str, project: str = "registry", timeout: float = 10.0) -> str:
    """GET /version from the server of the kubeconfig's current context, trusting only its CA (or nothing, when it
    says insecure-skip-tls-verify); return the server's gitVersion. Any HTTP answer counts as reached: the provider
    checks the credential. Raise ConfigError naming the setting when the API cannot be reached or verified."""
    try:
        cluster, user = _current_cluster(kubeconfig)
        server = str(cluster.get("server") or "")
        url = urlsplit(server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"its server {server!r} is not an http(s) URL")
        context = _tls_context(cluster) if url.scheme == "https" else None
    except (ValueError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{project}:kubeconfig = <secret> is invalid; accepted: a kubeconfig whose current context names a cluster "
            f"with a server URL and a readable CA ({exc.__class__.__name__}: {exc})"
        ) from None
    headers = {"Accept": "application/json"}
    if user.get("token"):
        headers["Authorization"] = f"Bearer {user['token']}"
    port = url.port or (443 if url.scheme == "https" else 80)
    conn = (
        http.client.HTTPSConnection(url.hostname, port, timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(url.hostname, port, timeout=timeout)
    )
    try:
        conn.request("GET", url.path.rstrip("/") + "/version", headers=headers)
        response = conn.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else exc.__class__.__name__
        detail = getattr(exc, "strerror", None) or str(exc) or reason
        raise ConfigError(
            f"{project}:kubeconfig = <secret> is invalid; accepted: a kubeconfig whose Kubernetes API answers from "
            f"here (the API at {server} cannot be reached: {detail})"
        ) from None
    finally:
        conn.close()
    try:
        version = yaml.safe_load(body) if response.status == 200 else None
    except yaml.YAMLError:
        version = None
    return str(version.get("gitVersion")) if isinstance(version, dict) else f"HTTP {response.status}"
