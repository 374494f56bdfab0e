"""Fetching a manager's `image_url` over http(s), as Propeller's proplet does for such URLs.

The URL is tenant input: only http and https, at most `MAX_REDIRECTS` redirects (each checked
again), a size cap, a deadline, and no private, loopback, link-local or otherwise internal
address unless `WASINN_SHIM_FETCH_PRIVATE=1` (tests serve modules on 127.0.0.1). The connection
goes to the address that was checked, so a name resolving differently a moment later (DNS
rebinding) cannot redirect it.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

PRIVATE_ENV = "WASINN_SHIM_FETCH_PRIVATE"
MAX_REDIRECTS = 3
TIMEOUT = 60.0


class FetchError(Exception):
    """The module could not be fetched; the message says why."""


def is_http_url(url: str) -> bool:
    """True for the URLs fetched directly (rather than through the registry protocol)."""
    return url.lower().startswith(("http://", "https://"))


def fetch(url: str, limit: int, timeout: float = TIMEOUT) -> bytes:
    """The body of `url` (status 200), at most `limit` bytes, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get(url, limit, deadline)
        if location is None:
            if status != 200:
                raise FetchError(f"GET {url}: HTTP {status}")
            return body
        url = urljoin(url, location)
    raise FetchError(f"GET {url}: more than {MAX_REDIRECTS} redirects")


def _get(url: str, limit: int, deadline: float) -> tuple[int, str | None, bytes]:
    """(status, redirect location or None, body) of one GET."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"image_url {url!r}: only http:// and https:// URLs with a host")
    port = parts.port or (443 if scheme == "https" else 80)
    address = _allowed_address(parts.hostname, port)
    remaining = max(deadline - time.monotonic(), 0.1)
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = _PinnedHTTPS(parts.hostname, address, port, remaining)
    else:
        connection = _PinnedHTTP(parts.hostname, address, port, remaining)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"Accept": "application/wasm, */*"})
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            return response.status, response.getheader("Location") or "", b""
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise FetchError(f"GET {url}: {length} bytes, over the {limit}-byte limit")
        chunks, size = [], 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"GET {url}: the body exceeds the {limit}-byte limit")
            if time.monotonic() > deadline:
                raise FetchError(f"GET {url}: not complete within the deadline")
            chunks.append(chunk)
        return response.status, None, b"".join(chunks)
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"GET {url}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()


def _allowed_address(host: str, port: int) -> str:
    """The first address of `host`, refusing internal ones unless allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError(f"image_url host {host!r} does not resolve: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if os.environ.get(PRIVATE_ENV) != "1":
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise FetchError(
                    f"image_url host {host!r} is {address}, an internal address: refused "
                    f"(set {PRIVATE_ENV}=1 to allow)"
                )
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address, whatever the name resolves to now."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """Connects to the checked address; the certificate is checked against the host name."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
