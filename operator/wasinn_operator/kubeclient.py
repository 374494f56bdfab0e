"""The one Kubernetes client of the operator and the shim: one login, JSON in and out, typed
errors.

The official client is used for transport and authentication only: responses are decoded from
JSON (not client models), so callers see exactly the camelCase the API server sends, and its
errors become `KubeError`s carrying the API server's own message. A read-decide-write that the
API server refuses because the object moved on (409 on a resourceVersion precondition) is
decided again on a fresh read, at most `STALE_RETRIES` times, by both callers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
STALE_RETRIES = 5
# Connections kept open to the API server. The client's default (5 per CPU) is below the
# operator's API threads (controller/handlers.py): every call beyond it opened a new TLS
# connection and dropped it after one request, a handshake on both sides per call.
POOL_SIZE = 32


class KubeError(Exception):
    """The API server refused a call, or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(KubeError):
    """404: the object does not exist."""


class ConflictError(KubeError):
    """409: it exists already, or it changed since it was read (a resourceVersion precondition)."""


class InvalidError(KubeError):
    """400 or 422: the API server rejected the object (schema, CEL rules, a bad patch)."""


class UnavailableError(KubeError):
    """Any other status, or no answer at all: the API server may answer later."""


@dataclass(frozen=True)
class InCluster:
    """This Pod's ServiceAccount and the API server's service address."""

    server: str
    ca_path: Path
    token: str
    namespace: str | None


def in_cluster() -> InCluster | None:
    """The in-cluster login when running in a Pod with a ServiceAccount token, else None.

    The server is the service's address from the environment the kubelet sets (not the
    kubernetes.default.svc name, which needs a cluster DNS not every cluster runs).
    """
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    token = SERVICE_ACCOUNT / "token"
    if not host or not token.is_file():
        return None
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    namespace = SERVICE_ACCOUNT / "namespace"
    return InCluster(
        server=server,
        ca_path=SERVICE_ACCOUNT / "ca.crt",
        token=token.read_text().strip(),
        namespace=namespace.read_text().strip() if namespace.is_file() else None,
    )


def kubeconfig_path() -> str | None:
    """`$KUBECONFIG` as it is now (None: the client's default, ~/.kube/config)."""
    return os.environ.get("KUBECONFIG") or None


def load_config() -> None:
    """Log the official client in: in-cluster credentials in a Pod (the client refreshes the
    ServiceAccount token as it rotates), else the kubeconfig."""
    if in_cluster() is not None:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return
    # The client reads $KUBECONFIG once, at import; read it now instead.
    kubernetes.config.load_kube_config(config_file=kubeconfig_path())  # type: ignore[no-untyped-call]


class KubeClient:
    """Core and custom-object calls that answer JSON (dicts) and raise `KubeError`s."""

    def __init__(self) -> None:
        load_config()
        configuration = kubernetes.client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = POOL_SIZE
        client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    @staticmethod
    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call an API method of `core` or `custom`; its decoded JSON body ({} when empty)."""
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _error(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"the Kubernetes API is unreachable: {exc}") from None
        data = response.data
        return json.loads(data) if data else {}

    @staticmethod
    def stream(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The watch events of a list call (`watch=True`), decoded, until the server ends it."""
        try:
            response = fn(*args, watch=True, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _error(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"the Kubernetes API is unreachable: {exc}") from None
        try:
            for line in response:
                if line.strip():
                    yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"the watch ended: {exc}") from None
        finally:
            response.release_conn()


def _error(exc: ApiException) -> KubeError:
    message = _message(exc)
    status = int(exc.status or 0)
    if status == 404:
        return NotFoundError(message, status)
    if status == 409:
        return ConflictError(message, status)
    if status in (400, 422):
        return InvalidError(message, status)
    return UnavailableError(f"the Kubernetes API answered {status}: {message}", status)


def _message(exc: ApiException) -> str:
    """The API server's own message (its Status object), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)
