"""A real PEP 503 simple index on 127.0.0.1 for the model tests, which pip downloads from.

`files` maps a distribution's filename to its bytes; the project it belongs to is read from the
filename. `/simple/<project>/` lists the project's files with links
`../../files/<filename>#sha256=<digest of the bytes served>`, and `/files/<filename>` serves
them. Every request path is recorded.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def project_of(filename: str) -> str:
    """The normalized project name a wheel or sdist filename belongs to."""
    return re.sub(r"[-_.]+", "-", filename.split("-", maxsplit=1)[0]).lower()


@dataclass
class SimpleIndex:
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    url: str = ""  # the server's base URL; the index is at `index`

    @property
    def index(self) -> str:
        """The simple index URL, as pip's --index-url takes it."""
        return self.url + "/simple/"

    def page(self, project: str) -> bytes | None:
        links = [
            f'<a href="../../files/{html.escape(name)}#sha256='
            f'{hashlib.sha256(body).hexdigest()}">{html.escape(name)}</a><br>'
            for name, body in sorted(self.files.items())
            if project_of(name) == project
        ]
        if not links:
            return None
        return (
            "<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        ).encode()


@contextmanager
def serving(server: SimpleIndex) -> Iterator[SimpleIndex]:
    """Run `server` on a free port until the block ends; `server.index` is its index URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests.append(self.path)
            path = self.path.split("?")[0]
            body, kind = None, "application/octet-stream"
            if path.startswith("/simple/") and path.endswith("/"):
                body, kind = server.page(path.removeprefix("/simple/").strip("/")), "text/html"
            elif path.startswith("/files/"):
                body = server.files.get(path.removeprefix("/files/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
