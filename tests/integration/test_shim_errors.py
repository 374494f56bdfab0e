"""Every bad input gets its documented 4xx as `{"error": ...}` and leaves stored tasks intact."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR
from wasinn_operator.shim.taskfields import redact

from .conftest import FAILED, Shim

pytestmark = pytest.mark.integration
UNKNOWN = "00000000-0000-4000-8000-000000000000"
LIMIT = 300_000  # above the classify guest (~250 kB), so an oversize module is cheap to make


def error(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    return str(body["error"])


@pytest.fixture
def shim(make_shim: Callable[..., Shim]) -> Shim:
    return make_shim("--max-wasm-bytes", str(LIMIT))


def test_bad_inputs(shim: Shim, classify_b64: str) -> None:
    task_id = shim.create("keep-me", file=classify_b64, env={"A": "1"}, inputs=["x"])
    before = shim.tasks()
    http = shim.http
    json_headers = {"Content-Type": "application/json"}
    cases: list[tuple[str, Any, int, tuple[str, ...]]] = [
        (
            "invalid JSON",
            http.post("/tasks", content=b'{"name": ', headers=json_headers),
            400,
            ("invalid JSON",),
        ),
        (
            "invalid JSON on PUT",
            http.put(f"/tasks/{task_id}", content=b"{,}", headers=json_headers),
            400,
            ("invalid JSON",),
        ),
        ("not an object", http.post("/tasks", json=["a"]), 400, ()),
        ("no name", http.post("/tasks", json={"file": classify_b64}), 400, ("name",)),
        ("daemon not a bool", http.put(f"/tasks/{task_id}", json={"daemon": 0}), 400, ("daemon",)),
        (
            "bad base64",
            http.put(f"/tasks/{task_id}", json={"file": "not base64!"}),
            400,
            ("file", "base64"),
        ),
        (
            "non-wasm file",
            http.put(
                f"/tasks/{task_id}",
                json={"file": base64.b64encode(b"#!/bin/sh\necho hi\n").decode()},
            ),
            400,
            ("WebAssembly",),
        ),
        (
            "non-wasm upload",
            http.put(
                f"/tasks/{task_id}/upload",
                files={"file": ("x.wasm", b"MZ\x90\x00", "application/wasm")},
            ),
            400,
            ("WebAssembly",),
        ),
        (
            "upload not .wasm",
            http.put(
                f"/tasks/{task_id}/upload",
                files={"file": ("x.txt", b"\0asm\1\0\0\0", "text/plain")},
            ),
            400,
            (".wasm",),
        ),
        (
            "upload without file",
            http.put(f"/tasks/{task_id}/upload", files={"other": ("a", b"")}),
            400,
            ("file",),
        ),
        (
            "oversize module",
            http.put(
                f"/tasks/{task_id}",
                json={"file": base64.b64encode(b"\0asm" + bytes(LIMIT)).decode()},
            ),
            413,
            ("limit",),
        ),
        (
            "oversize upload",
            http.put(
                f"/tasks/{task_id}/upload",
                files={"file": ("big.wasm", b"\0asm\1\0\0\0" + bytes(LIMIT), "application/wasm")},
            ),
            413,
            (),
        ),
        (
            "oversize body",
            http.post("/tasks", content=b"x" * (4 << 20), headers=json_headers),
            413,
            ("limit",),
        ),
        (
            "bad env name",
            http.put(f"/tasks/{task_id}", json={"env": {"BAD NAME": "1"}}),
            400,
            ("env",),
        ),
        # pkg/task FlexStrings: strings or numbers only.
        ("bad inputs", http.put(f"/tasks/{task_id}", json={"inputs": [True]}), 400, ("inputs",)),
        (
            "bad cli_args",
            http.put(f"/tasks/{task_id}", json={"cli_args": "-S nn"}),
            400,
            ("cli_args",),
        ),
        (
            "wrong content type",
            http.post("/tasks", content=b'{"name": "x"}', headers={"Content-Type": "text/plain"}),
            400,
            ("application/json",),
        ),
        ("no content type", http.put(f"/tasks/{task_id}", content=b'{"name": "x"}'), 400, ()),
        (
            "upload as JSON",
            http.put(f"/tasks/{task_id}/upload", json={"file": classify_b64}),
            400,
            ("multipart",),
        ),
        ("bad offset", http.get("/tasks", params={"offset": -1}), 400, ("offset",)),
        ("bad limit", http.get("/tasks", params={"limit": "many"}), 400, ("limit",)),
        ("too big a limit", http.get("/proplets", params={"limit": 100000}), 400, ("limit",)),
        ("unknown route", http.get("/nowhere"), 404, ("/nowhere",)),
        ("bad digest", http.get("/artifacts/md5:abc"), 400, ("digest",)),
        ("unknown artifact", http.get("/artifacts/sha256:" + "0" * 64), 404, ()),
        ("unknown proplet", http.get(f"/proplets/{UNKNOWN}"), 404, (UNKNOWN,)),
        ("stop a task not running", http.post(f"/tasks/{task_id}/stop"), 409, ("not",)),
    ]
    for verb, path in [
        ("GET", ""),
        ("PUT", ""),
        ("DELETE", ""),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("GET", "/results"),
    ]:
        response = http.request(
            verb, f"/tasks/{UNKNOWN}{path}", json={"name": "x"} if verb == "PUT" else None
        )
        cases.append((f"unknown id {verb} {path}", response, 404, (UNKNOWN,)))
    cases.append(
        (
            "unknown id upload",
            http.put(f"/tasks/{UNKNOWN}/upload", files={"file": ("a.wasm", b"\0asm\1\0\0\0")}),
            404,
            (UNKNOWN,),
        )
    )
    for name, response, status, words in cases:
        try:
            error(response, status, *words)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    assert shim.tasks() == before
    assert shim.task(task_id)["file"] == redact(classify_b64)
    # PUT without a name, or with "" (what propeller-cli and the SDK send), keeps the name.
    for body in ({"name": ""}, {"inputs": ["y"]}):
        kept = http.put(f"/tasks/{task_id}", json=body)
        assert (kept.status_code, kept.json()["name"]) == (200, "keep-me"), kept.text


def test_start_needs_a_module_and_no_double_start(shim: Shim, spin_wasm: bytes) -> None:
    empty = shim.create("no-module")
    error(shim.http.post(f"/tasks/{empty}/start"), 409, "no wasm module")
    task_id = shim.create("spin", file=base64.b64encode(spin_wasm).decode())
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    shim.wait_state(task_id, (2,))
    error(shim.http.post(f"/tasks/{task_id}/start"), 409, "already")
    # Propeller answers 200 to an update of a running task: the stored task changes, the
    # running attempt goes on as it started.
    renamed = shim.http.put(f"/tasks/{task_id}", json={"name": "renamed"})
    assert (renamed.status_code, renamed.json()["name"]) == (200, "renamed"), renamed.text
    assert shim.task(task_id)["state"] == 2
    assert shim.http.post(f"/tasks/{task_id}/stop").json() == {"stopped": True}
    stopped = shim.wait_state(task_id, (FAILED,))
    assert stopped["error"] == STOPPED_ERROR
    assert stopped["name"] == "renamed"
    assert shim.http.delete(f"/tasks/{task_id}").status_code == 204


def test_token(make_shim: Callable[..., Shim], tmp_path: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    shim = make_shim("--token-file", str(token_file))
    for path in ("/tasks", "/proplets"):
        missing = shim.http.get(path)
        error(missing, 401, "token")
        assert missing.headers["www-authenticate"] == "Bearer"
        error(shim.http.get(path, headers={"Authorization": "Bearer wrong"}), 401)
    error(shim.http.post("/tasks", json={"name": "x"}), 401)
    good = {"Authorization": "Bearer s3cret"}
    created = shim.http.post("/tasks", json={"name": "x"}, headers=good)
    assert created.status_code == 201
    assert shim.http.get("/tasks", headers=good).json()["total"] == 1
    assert shim.http.get("/health").status_code == 200  # health stays open, as in Propeller
