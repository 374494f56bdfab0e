"""The shim's proplet messages and its direct http(s) fetch of a manager's image_url."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wasinn_operator.mqtt import results_payload
from wasinn_operator.shim import httpfetch
from wasinn_operator.shim.announce import (
    ProcessSampler,
    alive_message,
    create_message,
    task_metrics_message,
)

MODULE = b"\0asm\1\0\0\0" + b"x" * 1000


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/module.wasm":
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODULE)))
            self.end_headers()
            self.wfile.write(MODULE)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/module.wasm")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_fetch_refuses_internal_addresses_by_default(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(httpfetch.PRIVATE_ENV, raising=False)
    with pytest.raises(httpfetch.FetchError, match=r"127\.0\.0\.1, an internal address: refused"):
        httpfetch.fetch(f"{server}/module.wasm", 1 << 20)
    with pytest.raises(httpfetch.FetchError, match="internal address"):
        httpfetch.fetch("http://169.254.169.254/latest/meta-data", 1 << 20)


def test_fetch_when_private_addresses_are_allowed(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(httpfetch.PRIVATE_ENV, "1")
    assert httpfetch.fetch(f"{server}/module.wasm", 1 << 20) == MODULE
    assert httpfetch.fetch(f"{server}/moved", 1 << 20) == MODULE  # redirects are followed
    with pytest.raises(httpfetch.FetchError, match="over the 100-byte limit"):
        httpfetch.fetch(f"{server}/module.wasm", 100)
    with pytest.raises(httpfetch.FetchError, match="HTTP 404"):
        httpfetch.fetch(f"{server}/missing", 1 << 20)
    with pytest.raises(httpfetch.FetchError, match="more than 3 redirects"):
        httpfetch.fetch(f"{server}/loop", 1 << 20)


@pytest.mark.parametrize("url", ["ftp://example.com/m.wasm", "file:///etc/passwd", "http:///x"])
def test_fetch_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(httpfetch.FetchError, match="only http:// and https://"):
        httpfetch.fetch(url, 1 << 20)


def test_is_http_url() -> None:
    assert httpfetch.is_http_url("HTTPS://example.com/m.wasm")
    assert not httpfetch.is_http_url("registry.example/classify:1")


def test_messages_have_the_rust_proplets_fields() -> None:
    # proplet/src/types.rs: DiscoveryMessage, PropletMetadata, LivelinessMessage, ResultMessage.
    created = create_message("p-1", "default")
    assert set(created) == {"proplet_id", "namespace", "metadata"}
    assert {"environment", "os", "hostname", "cpu_arch", "total_memory_bytes",
            "proplet_version", "wasm_runtime"} <= set(created["metadata"])  # fmt: skip
    assert created["metadata"]["total_memory_bytes"] > 0
    assert alive_message("p-1", "ns") == {"proplet_id": "p-1", "status": "alive", "namespace": "ns"}
    # A failed run's results are "" (a Rust String), never null.
    assert results_payload("t", "p", None, "boom") == {
        "task_id": "t", "proplet_id": "p", "results": "", "error": "boom",
    }  # fmt: skip


def test_metrics_messages_parse_as_the_manager_reads_them() -> None:
    # manager/service.go handlePropletMetrics / handleTaskMetrics: RFC 3339 timestamps,
    # cpu_metrics / memory_metrics objects, metrics.uptime_seconds.
    message = ProcessSampler().metrics_message("p-1", "default")
    assert message["proplet_id"] == "p-1" and message["namespace"] == "default"
    datetime.fromisoformat(message["timestamp"])
    assert message["memory_metrics"]["rss_bytes"] > 0
    assert {"user_seconds", "system_seconds", "percent"} == set(message["cpu_metrics"])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    task = task_metrics_message("t-1", "p-1", start, start + timedelta(seconds=3))
    assert task["metrics"] == {"uptime_seconds": 3}
    assert task["timestamp"] == "2026-01-01T00:00:03Z"
