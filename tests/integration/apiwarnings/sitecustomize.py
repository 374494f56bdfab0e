"""Put on PYTHONPATH of the operator and shim processes the integration tests start (the `kube`
fixture does): appends every `Warning` header the API server answers a write of the official
client with (an unknown field it dropped from a write, a deprecated API) to the file
$WASINN_API_WARNINGS, one line each, so that the test fails naming it. Reads are left alone."""

from __future__ import annotations

import os
from typing import Any


def _install(path: str) -> None:
    from kubernetes.client import rest  # noqa: PLC0415 (only in processes that asked for it)

    request = rest.RESTClientObject.request

    def recording(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = request(self, method, url, *args, **kwargs)
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
            warnings = response.headers.getlist("Warning")
            if warnings:
                with open(path, "a", encoding="utf-8") as out:
                    out.writelines(f"{method} {url}: {w}\n" for w in warnings)
        return response

    rest.RESTClientObject.request = recording


if os.environ.get("WASINN_API_WARNINGS"):
    _install(os.environ["WASINN_API_WARNINGS"])
