"""Hostile REST input, table-driven: each request gets its exact status and error, nothing is
stored, later listings still answer, and no request adds metric series."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import Shim

pytestmark = pytest.mark.integration
LIMIT = 300_000  # --max-wasm-bytes: a body over the limit is cheap to make
BODY_LIMIT = 400_000 + (1 << 20)  # ceil(LIMIT * 4 / 3) + 1 MiB, as main.py computes it
JSON = {"Content-Type": "application/json"}
SURROGATE = (
    "the string holds a lone UTF-16 surrogate (\\udc80 at character 1), which is not valid Unicode"
)
TASK = "{task}"  # replaced by the id of an existing task


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    error: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


# fmt: off
CASES = [
    # Text that is not Unicode, in every string field.
    Case("surrogate in name", "POST", "/tasks", 400, f"name: {SURROGATE}", b'{"name": "x\\udc80"}'),
    Case("surrogate in env value", "POST", "/tasks", 400, f"env.A: {SURROGATE}",
         b'{"name": "x", "env": {"A": "x\\udc80"}}'),
    Case("surrogate in env name", "POST", "/tasks", 400, f"env: a key: {SURROGATE}",
         b'{"name": "x", "env": {"x\\udc80": "v"}}'),
    Case("surrogate in cli_args", "PUT", f"/tasks/{TASK}", 400, f"cli_args.0: {SURROGATE}",
         b'{"cli_args": ["x\\udc80"]}'),
    Case("surrogate in inputs", "PUT", f"/tasks/{TASK}", 400, f"inputs.1: {SURROGATE}",
         b'{"inputs": [1, "x\\udc80"]}'),
    Case("surrogate in image_url", "PUT", f"/tasks/{TASK}", 400, f"image_url: {SURROGATE}",
         b'{"image_url": "x\\udc80"}'),
    Case("surrogate in an ignored field", "POST", "/tasks", 400, f"extra.0: {SURROGATE}",
         b'{"name": "x", "extra": ["x\\udc80"]}'),
    Case("not UTF-8", "POST", "/tasks", 400,
         "invalid JSON: the body is not UTF-8 (byte 0xc3 at offset 10)", b'{"name": "\xc3("}'),
    # Structure.
    Case("100,000 nested arrays", "POST", "/tasks", 400,
         "invalid JSON: nested deeper than 64 levels", b"[" * 100_000 + b"]" * 100_000),
    Case("100,000 nested objects", "PUT", f"/tasks/{TASK}", 400,
         "invalid JSON: nested deeper than 64 levels", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    Case("65 levels in an ignored field", "POST", "/tasks", 400,
         "invalid JSON: nested deeper than 64 levels",
         b'{"name": "x", "x": ' + b"[" * 64 + b"]" * 64 + b"}"),
    Case("truncated JSON", "POST", "/tasks", 400,
         "invalid JSON: Expecting value: line 1 column 10 (char 9)", b'{"name": '),
    Case("empty body", "POST", "/tasks", 400,
         "invalid JSON: Expecting value: line 1 column 1 (char 0)", b""),
    Case("not an object", "POST", "/tasks", 400,
         "body: Input should be a valid dictionary or instance of TaskInput", b"[1]"),
    # Numbers.
    Case("NaN", "PUT", f"/tasks/{TASK}", 400, "invalid JSON: NaN is not a JSON value",
         b'{"inputs": [NaN]}'),
    Case("Infinity", "PUT", f"/tasks/{TASK}", 400, "invalid JSON: Infinity is not a JSON value",
         b'{"inputs": [Infinity]}'),
    Case("5,000 digits", "PUT", f"/tasks/{TASK}", 400,
         "invalid JSON: a number has more than 4300 digits",
         b'{"inputs": [' + b"7" * 5000 + b"]}"),
    # Inputs are text (Propeller's FlexStrings): a number is kept as written, null is "" (as Go
    # decodes it: tests/unit/test_shim_units.py); others refused.
    Case("input not text or number", "PUT", f"/tasks/{TASK}", 400,
         "inputs.0: Input should be a valid string", b'{"inputs": [true]}'),
    # Wrong types.
    Case("name a number", "POST", "/tasks", 400, "name: Input should be a valid string",
         b'{"name": 5}'),
    Case("empty name", "POST", "/tasks", 400, "name: a task needs a non-empty name",
         b'{"name": ""}'),
    Case("no name", "POST", "/tasks", 400, "name: a task needs a non-empty name", b"{}"),
    Case("env a list", "PUT", f"/tasks/{TASK}", 400, "env: Input should be a valid dictionary",
         b'{"env": ["A=1"]}'),
    Case("env value a number", "PUT", f"/tasks/{TASK}", 400,
         "env.A: Input should be a valid string", b'{"env": {"A": 1}}'),
    Case("cli_args a string", "PUT", f"/tasks/{TASK}", 400,
         "cli_args: Input should be a valid list", b'{"cli_args": "-S nn"}'),
    Case("inputs an object", "PUT", f"/tasks/{TASK}", 400, "inputs: Input should be a valid list",
         b'{"inputs": {"a": 1}}'),
    Case("daemon a string", "PUT", f"/tasks/{TASK}", 400,
         "daemon: Input should be a valid boolean", b'{"daemon": "true"}'),
    Case("file a number", "PUT", f"/tasks/{TASK}", 400, "file: Input should be a valid string",
         b'{"file": 5}'),
    Case("file not base64", "PUT", f"/tasks/{TASK}", 400,
         "file: not valid base64 (standard alphabet, padded): Only base64 data is allowed",
         b'{"file": "AGFzbQ!!"}'),
    Case("file not wasm", "PUT", f"/tasks/{TASK}", 400,
         "the file is not a WebAssembly module (it does not start with \\0asm)",
         b'{"file": "' + base64.b64encode(b"#!/bin/sh\n") + b'"}'),
    Case("bad env name", "PUT", f"/tasks/{TASK}", 400,
         "env: invalid environment variable name(s) 'A B': a name must match "
        "[-._a-zA-Z][-._a-zA-Z0-9]*",
         b'{"env": {"A B": "1"}}'),
    # Sizes.
    Case("1025 inputs", "PUT", f"/tasks/{TASK}", 400,
         "inputs: 1025 entries; at most 1024 are accepted",
         b'{"inputs": [' + b",".join([b"1"] * 1025) + b"]}"),
    Case("a 70 kB name", "PUT", f"/tasks/{TASK}", 400,
         "name, image_url, cli_args, inputs and env: 70033 bytes as JSON; at most 65536 are "
        "accepted",
         b'{"name": "' + b"n" * 70_000 + b'"}'),
    Case("module over the limit", "PUT", f"/tasks/{TASK}", 413,
         f"the module is {LIMIT + 4} bytes, over the {LIMIT}-byte limit",
         b'{"file": "' + base64.b64encode(b"\0asm" + bytes(LIMIT)) + b'"}'),
    Case("body over the limit", "POST", "/tasks", 413,
         f"the request body is over the {BODY_LIMIT}-byte limit", b" " * (BODY_LIMIT + 1)),
    # Media types.
    Case("text/plain", "POST", "/tasks", 400, "Content-Type must be application/json",
         b'{"name": "x"}', {"Content-Type": "text/plain"}),
    Case("no content type", "PUT", f"/tasks/{TASK}", 400, "Content-Type must be application/json",
         b'{"name": "x"}', {}),
    Case("form on a JSON route", "POST", "/tasks", 400, "Content-Type must be application/json",
         b"name=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    Case("JSON upload", "PUT", f"/tasks/{TASK}/upload", 400,
         "Content-Type must be multipart/form-data with a `file` part", b'{"file": "AGFzbQ=="}'),
    Case("multipart without boundary", "PUT", f"/tasks/{TASK}/upload", 400,
         "the multipart Content-Type has no boundary", b"--x\r\n",
         {"Content-Type": "multipart/form-data"}),
    Case("multipart cut short", "PUT", f"/tasks/{TASK}/upload", 400,
         "invalid multipart body: it ends before its closing boundary",
         b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wasm"\r\n\r\n\0asm',
         {"Content-Type": "multipart/form-data; boundary=b"}),
    # Methods, routes, queries.
    Case("unknown method", "BREW", "/tasks", 405, "method BREW is not allowed on /tasks", None, {}),
    Case("unknown method on a task", "PROPFIND", f"/tasks/{TASK}", 405,
         f"method PROPFIND is not allowed on /tasks/{TASK}", None, {}),
    Case("unknown method, unknown path", "FOO", "/x/y", 404, "no route FOO /x/y", None, {}),
    Case("offset past int64", "GET", "/tasks?offset=9223372036854775808", 400,
         "offset: Input should be less than or equal to 9223372036854775807", None, {}),
    Case("limit not a number", "GET", "/tasks?limit=1e3", 400,
         "limit: Input should be a valid integer, unable to parse string as an integer", None, {}),
]
# fmt: on


@pytest.fixture
def shim(make_shim: Callable[..., Shim]) -> Shim:
    return make_shim("--max-wasm-bytes", str(LIMIT))


def test_hostile_requests_get_their_exact_error(shim: Shim) -> None:
    task_id = shim.create("keep-me", env={"A": "1"}, inputs=["x"])
    before = shim.tasks()
    metrics_before = len(shim.http.get("/metrics").text.splitlines())
    failures = []
    for case in CASES:
        path = case.path.replace(TASK, task_id)
        answer = shim.http.request(case.method, path, content=case.body, headers=case.headers)
        got: Any = answer.text
        if answer.headers.get("content-type", "").startswith("application/json"):
            got = answer.json()
        expected = {"error": case.error.replace(TASK, task_id)}
        if answer.status_code != case.status or got != expected:
            failures.append(f"{case.name}: {answer.status_code} {got!r}, expected {case.status}")
    assert not failures, "\n".join(failures)
    chunked = shim.http.post("/tasks", content=_chunks(b" " * (BODY_LIMIT + 1)), headers=JSON)
    assert chunked.status_code == 413, chunked.text  # no Content-Length: counted as it comes
    assert shim.tasks() == before  # nothing stored, and the listing still answers
    for _ in range(100):
        shim.http.request("X-RANDOM-" + str(_), "/tasks")
    metrics = shim.http.get("/metrics").text
    assert "X-RANDOM" not in metrics
    assert len(metrics.splitlines()) < metrics_before + 400  # bounded: a few new series only
