"""The shim's defences, piece by piece: strict JSON, streamed modules, refused databases, the
pool that long jobs cannot block, health checks, bounded metric labels and listings."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from wasinn_operator.api.propeller import Task, TaskInput
from wasinn_operator.shim import (
    ArtifactStore,
    BadRequestError,
    TaskRecord,
    TaskService,
    TooLargeError,
    UnsupportedMediaError,
)
from wasinn_operator.shim.app import create_app
from wasinn_operator.shim.errors import UnavailableError
from wasinn_operator.shim.health import free_space
from wasinn_operator.shim.jsonbody import parse_json
from wasinn_operator.shim.local import LocalBackend
from wasinn_operator.shim.pool import Pool
from wasinn_operator.shim.service import MAX_ITEMS, MAX_SPEC_BYTES
from wasinn_operator.shim.sqlite import TaskDB, UnusableDatabaseError
from wasinn_operator.shim.uploads import module_from_base64, receive_multipart

pytestmark = pytest.mark.unit
WASM = b"\0asm\1\0\0\0"
SURROGATE = "a lone UTF-16 surrogate (\\udc80 at character 1), which is not valid Unicode"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"name": "x\\udc80"}', f"name: the string holds {SURROGATE}"),
        (b'{"env": {"A": "x\\udc80"}}', f"env.A: the string holds {SURROGATE}"),
        (b'{"env": {"x\\udc80": "v"}}', f"env: a key: the string holds {SURROGATE}"),
        (b'{"cli_args": ["-S", "x\\udc80"]}', f"cli_args.1: the string holds {SURROGATE}"),
        (b'["x\\udc80"]', f"0: the string holds {SURROGATE}"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested deeper than 64 levels"),
        (b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}", "invalid JSON: nested deeper than 64 levels"),
        (b'{"inputs": [NaN]}', "invalid JSON: NaN is not a JSON value"),
        (b'{"inputs": [-Infinity]}', "invalid JSON: -Infinity is not a JSON value"),
        (b'{"inputs": [' + b"9" * 5000 + b"]}", "invalid JSON: a number has more than 4300 digits"),
        (b'{"name": "\xff"}', "invalid JSON: the body is not UTF-8 (byte 0xff at offset 10)"),
        (b"", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    ],
)
def test_strict_json_refuses_what_cannot_be_stored(raw: bytes, error: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_json(raw)
    assert str(caught.value) == error


def test_strict_json_accepts_surrogate_pairs_and_empties_its_buffer() -> None:
    raw = bytearray(b'{"name": "\\ud83d\\ude00", "a": ' + b"[" * 63 + b"]" * 63 + b"}")
    assert parse_json(raw)["name"] == "\U0001f600"
    assert raw == b""  # freed as soon as it was decoded


def test_base64_module_is_decoded_into_the_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=3 << 20)
    module = WASM + os.urandom(2 << 20)  # spans several decoding slices
    upload = module_from_base64(base64.b64encode(module).decode(), store)
    digest = upload.commit()
    assert store.read(digest) == module
    with pytest.raises(BadRequestError, match="file: not valid base64"):
        module_from_base64("AGFzbQ==" + "AAAA" * (1 << 18), store)  # padding in the middle
    with pytest.raises(BadRequestError, match="file: not valid base64"):
        module_from_base64("AGFzb", store)
    with pytest.raises(TooLargeError, match=r"is 3145736 bytes, over the 3145728-byte limit"):
        module_from_base64(base64.b64encode(WASM + bytes(3 << 20)).decode(), store)
    with pytest.raises(UnsupportedMediaError, match="WebAssembly"):
        module_from_base64(base64.b64encode(b"#!/bin/sh\n").decode(), store).commit()
    assert [p.name for p in store.directory.iterdir()] == [digest.removeprefix("sha256:")]


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _receive(
    store: ArtifactStore, body: bytes, content_type: str = "multipart/form-data; boundary=b0und"
) -> tuple[str, str]:
    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7000):  # parts split anywhere
            yield body[start : start + 7000]

    async def offload(call: Callable[[], None]) -> None:
        call()

    def check(name: str) -> None:
        if not name.endswith(".wasm"):
            raise BadRequestError(f"file: the file name {name!r} must end with .wasm")

    async def run() -> tuple[str, str]:
        name, upload = await receive_multipart(content_type, stream(), store, check, offload)
        return name, upload.commit()

    return asyncio.run(run())


def test_multipart_upload_is_streamed_into_the_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=1 << 20)
    module = WASM + os.urandom(100_000)
    body = _multipart([("note", None, b"x" * 50_000), ("file", "m.wasm", module)])
    name, digest = _receive(store, body)
    assert (name, store.read(digest)) == ("m.wasm", module)
    cases = [
        (_multipart([("other", "m.wasm", module)]), BadRequestError, "no file part named `file`"),
        (_multipart([("file", "a.wasm", WASM)] * 2), BadRequestError, "more than one `file`"),
        (_multipart([("file", "m.txt", module)]), BadRequestError, "must end with .wasm"),
        (_multipart([("file", "m.wasm", b"MZ" + module)]), UnsupportedMediaError, "\\\\0asm"),
        (_multipart([("file", "m.wasm", WASM + bytes(1 << 20))]), TooLargeError, "limit"),
        (_multipart([("file", "m.wasm", module)])[:-10], BadRequestError, "closing boundary"),
        (_multipart([("f", None, b"")] * 17), BadRequestError, "more than 16 parts"),
    ]
    for body, error, words in cases:
        with pytest.raises(error, match=words):
            _receive(store, body)
    with pytest.raises(BadRequestError, match="no boundary"):
        _receive(store, body, "multipart/form-data")
    assert len(list(store.directory.iterdir())) == 1  # nothing left behind by the refusals


def test_store_files_are_private_and_stale_uploads_go(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    digest = store.put(WASM)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o600
    stale = store.directory / ".upload-x.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    ArtifactStore(tmp_path / "a")
    assert not stale.exists()


def _db_with_tasks(path: Path, count: int) -> None:
    db = TaskDB(path)
    for i in range(count):
        db.add(TaskRecord(id=f"t{i}", name="x" * 2000, results="r" * 5000))
    db.close()


def test_unusable_databases_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(UnusableDatabaseError, match=r"empty \(0 bytes\)"):
        TaskDB(empty)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UnusableDatabaseError, match="not an SQLite database"):
        TaskDB(garbage)
    damaged = tmp_path / "damaged.db"
    _db_with_tasks(damaged, 200)
    with sqlite3.connect(damaged) as db:  # fold the WAL in, so the damage hits the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)
    damaged.write_bytes(data)
    with pytest.raises(UnusableDatabaseError, match="is damaged"):
        TaskDB(damaged)
    fresh = tmp_path / "fresh.db"
    db = TaskDB(fresh)
    db.add(TaskRecord(id="a", name="a"))
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE(os.stat(f"{fresh}{suffix}").st_mode) == 0o600
    db.close()


def test_a_failing_database_is_unavailable_and_named(tmp_path: Path) -> None:
    db = TaskDB(tmp_path / "tasks.db")
    db.add(TaskRecord(id="a", name="a"))
    db._db.close()  # the connection fails as a broken disk would make it
    with pytest.raises(UnavailableError, match=r"the task database .*tasks\.db failed"):
        db.get("a")
    assert "tasks.db failed" in str(db.probe())
    assert db.problem() is not None


def test_listing_carries_results_as_propeller_does(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, "p1")
    try:
        backend.db.add(TaskRecord(id="a", name="a", results="r" * 100_000, results_truncated=True))
        [listed], _ = backend.db.page(0, 10)
        assert (listed.results, listed.results_truncated) == ("r" * 100_000, True)
        assert backend.get("a").results == "r" * 100_000
    finally:
        backend.close()


def test_results_truncated_is_shown_only_when_true() -> None:
    assert "results_truncated" not in Task(id="i", name="n").to_json()
    assert Task(id="i", name="n", results_truncated=True).to_json()["results_truncated"] is True


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TaskService]:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, "p1")
    yield TaskService(backend, artifacts, "p1")
    backend.close()


def test_a_task_is_bounded_besides_its_module(service: TaskService) -> None:
    with pytest.raises(BadRequestError, match=f"inputs: 1025 entries; at most {MAX_ITEMS}"):
        service.create(TaskInput(name="x", inputs=["a"] * (MAX_ITEMS + 1)))
    with pytest.raises(BadRequestError, match=f"as JSON; at most {MAX_SPEC_BYTES}"):
        service.create(TaskInput(name="x" * MAX_SPEC_BYTES))
    assert service.list(0, 10).total == 0  # nothing stored


def test_an_emptied_database_never_empties_the_store(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    kept = artifacts.put(WASM)  # a module of tasks the (new, empty) database does not know
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, "p1")
    try:
        service = TaskService(backend, artifacts, "p1")
        file = base64.b64encode(WASM + b"\1").decode()
        task = service.create(TaskInput(name="a", file=file))
        service.update(task.id, TaskInput(name="a", file=""))  # its module is released
        assert artifacts.digests() == {kept}
    finally:
        backend.close()


def test_health_names_what_fails(service: TaskService, tmp_path: Path) -> None:
    health = service.health()
    assert health.status == "pass"
    assert set(health.checks) == {"artifacts", "database", "disk", "workers"}
    assert free_space([tmp_path], 1 << 62) is not None
    assert "below the" in str(free_space([tmp_path], 1 << 62))
    service.checks.add("mqtt", lambda: "not connected to the MQTT broker at h:1")
    service.checks._cached = None
    health = service.health()
    assert health.status == "fail"
    assert health.checks["mqtt"].output == "not connected to the MQTT broker at h:1"


def test_pool_jobs_past_the_limit_leave_their_slot() -> None:
    release = threading.Event()
    started: list[str] = []
    done: dict[str, threading.Event] = {name: threading.Event() for name in ("a", "b", "c", "d")}

    def handle(name: str) -> None:
        started.append(name)
        if name == "boom":
            raise RuntimeError("a bug in a job")
        if name in ("a", "b"):
            release.wait(60)  # endless, until the test lets them go
        done[name].set()

    pool: Pool[str] = Pool(handle, slots=1, long_slots=2, long_after=0.0)
    try:
        for name in ("a", "b", "boom", "c"):
            pool.put(name)
        assert done["c"].wait(60), started  # ran while a and b still hold their threads
        assert not done["a"].is_set() and not done["b"].is_set()
        assert pool.running() == 2
        release.set()
        assert done["a"].wait(60) and done["b"].wait(60)
        pool.put("d")
        assert done["d"].wait(60)
        assert pool.problem() is None  # no thread died of the failing job
    finally:
        release.set()
        pool.close()


def _requests(
    app: FastAPI, requests: list[tuple[str, str, dict[str, Any]]]
) -> list[httpx.Response]:
    """The app's answers to `(method, path, headers)`, in process."""

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return [await client.request(m, p, headers=h) for m, p, h in requests]

    return asyncio.run(send())


def test_metric_labels_are_bounded(service: TaskService) -> None:
    noise = [(f"M{i}", "/tasks", {}) for i in range(50)] + [
        ("GET", f"/nowhere/{i}", {}) for i in range(50)
    ]
    text = _requests(create_app(service), [*noise, ("GET", "/metrics", {})])[-1].text
    series = [
        line for line in text.splitlines() if line.startswith("wasinn_shim_http_requests_total")
    ]
    assert len(series) <= 4, series  # other/405 on /tasks, GET/404 unmatched, GET/200 /metrics
    assert not any("M1" in line or "/nowhere" in line for line in text.splitlines())


def test_bearer_tokens_with_any_bytes_are_refused_cleanly(service: TaskService) -> None:
    bearer = {"Authorization": "Bearer caf\xe9".encode("latin-1")}
    [answer] = _requests(create_app(service, token="s3cret"), [("GET", "/tasks", bearer)])
    assert answer.status_code == 401


def test_a_refused_start_message_is_recorded_failed(service: TaskService) -> None:
    """As the MQTT bridge does: a start refused by a check is accepted again with its error,
    so the manager hears why (the refused body is not applied a second time)."""
    body = TaskInput(name="m", inputs=["a"] * (MAX_ITEMS + 1))
    with pytest.raises(BadRequestError) as caught:
        service.accept("mgr-1", body)
    assert service.accept("mgr-1", body, None, str(caught.value))
    record = service.store.get("mgr-1")
    assert (record.phase.state, record.inputs) == (4, [])
    assert record.error == f"inputs: 1025 entries; at most {MAX_ITEMS} are accepted"
