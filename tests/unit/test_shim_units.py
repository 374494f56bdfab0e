"""Pure pieces of the shim: Propeller JSON and its TaskSpec mapping, artifacts, pagination."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from wasinn_operator.api.lifecycle import TaskPhase
from wasinn_operator.api.propeller import (
    StartMessage,
    StopMessage,
    Task,
    TaskInput,
    from_task_spec,
    to_task_spec,
    wasm_source,
)
from wasinn_operator.shim import (
    ArtifactStore,
    BadRequestError,
    ConflictError,
    NotFoundError,
    TaskRecord,
    TaskService,
    TooLargeError,
    UnsupportedMediaError,
)
from wasinn_operator.shim.jsonbody import parse_json
from wasinn_operator.shim.local import LocalBackend
from wasinn_operator.shim.registry import RegistryFetcher

pytestmark = pytest.mark.unit
WASM = b"\0asm\1\0\0\0"
DIGEST = "sha256:" + "a" * 64


def test_task_json_omits_empty_fields_and_uses_zero_times() -> None:
    data = Task(id="i", name="n").to_json()
    assert data == {
        "id": "i",
        "name": "n",
        "state": 0,
        "cli_args": None,
        "daemon": False,
        "start_time": "0001-01-01T00:00:00Z",
        "finish_time": "0001-01-01T00:00:00Z",
        "created_at": "0001-01-01T00:00:00Z",
        "updated_at": "0001-01-01T00:00:00Z",
    }


def test_inputs_are_text_as_in_propeller() -> None:
    # pkg/task/task.go FlexStrings: a string stays, a number becomes its JSON text as sent.
    body = TaskInput.model_validate(
        parse_json(b'{"inputs": [0, 18446744073709551616, "x", 3.0, 1.50, -1, 1e400, -0]}')
    )
    assert body.inputs == ["0", "18446744073709551616", "x", "3.0", "1.50", "-1", "1e400", "-0"]
    assert TaskInput.model_validate({"inputs": [7, 2.5]}).inputs == ["7", "2.5"]
    # Go decodes a JSON null into a string as "": the real manager stores [null, 1] as ["", "1"].
    assert TaskInput.model_validate({"inputs": [None, 1]}).inputs == ["", "1"]
    for bad in ([True], [[1]], [{}]):
        with pytest.raises(ValidationError):
            TaskInput.model_validate({"inputs": bad})


def test_input_validation() -> None:
    with pytest.raises(ValidationError, match="base64"):
        TaskInput.model_validate({"file": "no base64!"})
    with pytest.raises(ValidationError, match="environment variable name"):
        TaskInput.model_validate({"env": {"1 bad": "x"}})
    with pytest.raises(ValidationError):
        TaskInput.model_validate({"daemon": "yes"})
    body = TaskInput.model_validate({"file": base64.b64encode(WASM).decode(), "id": "ignored"})
    assert body.wasm_bytes() == WASM
    assert body.model_fields_set == {"file"}


def test_task_spec_mapping() -> None:
    task = Task(
        id="t", name="n", cli_args=["-S", "nn"], inputs=["7", "--top"], env={"A": "1"}, daemon=True
    )
    pod = to_task_spec(task, wasm_source(DIGEST, None, base_url="http://shim:7070/"))
    assert pod.wasm.url == f"http://shim:7070/artifacts/{DIGEST}"
    assert pod.wasm.digest == DIGEST
    assert (pod.cli_args, pod.args, pod.env, pod.daemon) == (
        ["-S", "nn"],
        ["7", "--top"],
        {"A": "1"},
        True,
    )
    local = to_task_spec(task, wasm_source(DIGEST, "reg/x:1", local_path="/a/b"))
    assert (local.wasm.path, local.wasm.digest) == ("/a/b", DIGEST)  # a stored file wins
    image = to_task_spec(task, wasm_source("", "reg/x:1"))
    assert image.wasm.image == "reg/x:1"
    with pytest.raises(ValueError, match="no wasm module"):
        wasm_source("", None)
    back = from_task_spec(image)
    assert (back.image_url, back.cli_args, back.inputs, back.env, back.daemon) == (
        "reg/x:1",
        ["-S", "nn"],
        ["7", "--top"],
        {"A": "1"},
        True,
    )


def test_manager_message_addressing() -> None:
    assert StartMessage(id="t").addressed_to("me")  # v-old: no addressing
    assert StartMessage(id="t", broadcast=True, proplet_id="").addressed_to("me")
    assert StartMessage(id="t", broadcast=False, proplet_id="me").addressed_to("me")
    assert not StartMessage(id="t", broadcast=False, proplet_id="other").addressed_to("me")
    assert not StopMessage(id="t", proplet_id="other").addressed_to("me")


def test_artifact_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=64)
    digest = store.put(WASM)
    assert store.put(WASM) == digest  # deduplicated
    assert store.read(digest) == WASM
    assert store.digests() == {digest}
    with pytest.raises(UnsupportedMediaError, match="WebAssembly"):
        store.put(b"#!/bin/sh")
    with pytest.raises(TooLargeError, match="64-byte limit"):
        store.put(WASM + bytes(64))
    with pytest.raises(BadRequestError):
        store.path("md5:x")
    with pytest.raises(NotFoundError):
        store.path(DIGEST)
    other = store.put(WASM + b"\1")
    assert store.release({digest}, {digest}) == []  # still referred to
    assert store.release({digest}, set()) == [digest]
    assert store.digests() == {other}  # only a released digest goes, never an unknown one
    assert [p.name for p in store.directory.iterdir()] == [other.removeprefix("sha256:")]


@pytest.fixture
def service(tmp_path: Path) -> TaskService:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, "p1")
    return TaskService(backend, artifacts, "p1")


def test_pages_are_stable_and_bounded(service: TaskService) -> None:
    # Newest first, pages of 1 to 100 (Propeller: pkg/storage/sqlite/tasks.go, requests.go).
    ids = [service.create(TaskInput(name=f"t{i}")).id for i in range(5)][::-1]
    assert [t.id for t in service.list(0, 100).tasks] == ids
    page = service.list(3, 10)
    assert (page.total, [t.id for t in page.tasks]) == (5, ids[3:])
    assert service.list(10, 2).tasks == []
    for offset, limit in ((-1, 1), (0, -1), (0, 0), (0, 101)):
        with pytest.raises(BadRequestError):
            service.list(offset, limit)


def test_artifacts_follow_task_references(service: TaskService) -> None:
    file = base64.b64encode(WASM).decode()
    first = service.create(TaskInput(name="a", file=file))
    second = service.create(TaskInput(name="b", file=file))
    assert len(service.artifacts.digests()) == 1
    service.delete(first.id)
    assert len(service.artifacts.digests()) == 1  # still used by the second task
    service.update(second.id, TaskInput.model_validate({"file": None}))
    assert service.artifacts.digests() == set()
    with pytest.raises(NotFoundError):
        service.delete(first.id)
    with pytest.raises(ConflictError, match="no wasm module"):
        service.start(second.id)
    with pytest.raises(ConflictError, match="not scheduled or running"):
        service.stop(second.id)


def test_record_to_task() -> None:
    # inputs=[1]: a record of an earlier version, which stored numbers; answered as text.
    record = TaskRecord(id="i", name="n", phase=TaskPhase.FAILED, error="boom", inputs=[1])  # type: ignore[list-item]
    task = record.to_task()
    assert (task.state, task.error, task.inputs, task.env) == (4, "boom", ["1"], None)


def test_registry_chunks_are_assembled_in_order() -> None:
    requests: list[dict[str, object]] = []
    fetcher = RegistryFetcher(lambda body: requests.append(dict(body)) or True, limit=100)

    def send() -> None:
        for idx, part in ((1, b"cd"), (0, b"ab"), (2, b"e")):
            fetcher.on_chunk(
                {
                    "app_name": "img",
                    "chunk_idx": idx,
                    "total_chunks": 3,
                    "data": base64.b64encode(part).decode(),
                }
            )

    threading.Timer(0.05, send).start()
    assert fetcher.fetch("img", timeout=30) == b"abcde"
    assert requests == [{"app_name": "img"}]
