"""`wasinn proplet serve`'s protocol, served in this process over two pipes."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasinn_operator.proplet.worker import serve
from wasinn_operator.runtime import lingering

pytestmark = pytest.mark.unit
GUESTS = Path(__file__).parent.parent / "runtime" / "guests"


class Served:
    """`serve()` in a thread; `ask` sends a line and reads the answer."""

    def __init__(self, tmp_path: Path) -> None:
        task_r, self._task_w = os.pipe()
        self._result_r, result_w = os.pipe()
        env = {"WASINN_WORKER_FDS": f"{task_r},{result_w}", "WASINN_CACHE_DIR": str(tmp_path)}
        self.code: list[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(serve(env)), daemon=True)
        self.thread.start()
        self.tasks = os.fdopen(self._task_w, "wb")
        self.results = os.fdopen(self._result_r, "rb")

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.results.readline()))

    def ask(self, line: str) -> dict[str, Any]:
        self.tasks.write(line.encode() + b"\n")
        self.tasks.flush()
        return dict(self.read()["summary"])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    worker = Served(tmp_path)
    yield worker
    worker.tasks.close()
    worker.thread.join(30)
    worker.results.close()


def inline(name: str) -> dict[str, str]:
    wasm = wasmtime.wat2wasm((GUESTS / f"{name}.wat").read_text())
    return {"inline": base64.b64encode(wasm).decode()}


def test_tasks_one_after_another(served: Served) -> None:
    assert served.read() == {"ready": os.getpid()}
    bad = served.ask('{"wasm": {}}')
    assert (bad["state"], bad["exitCode"]) == ("Failed", 1)
    assert bad["error"].startswith("invalid task: wasm: exactly one of")
    task = {"id": "t1", "wasm": inline("hello"), "env": {"TASK_LEAK_PROBE": "1"}}
    for _ in range(2):  # the same engine serves the next task
        summary = served.ask(json.dumps(task))
        assert (summary["state"], summary["stdout"], summary["taskId"]) == (
            "Completed",
            "hello from wasm\n",
            "t1",
        )
        assert summary["digest"].startswith("sha256:")
    assert "TASK_LEAK_PROBE" not in os.environ  # the task's env reached only its guest
    trapped = served.ask(json.dumps({"wasm": inline("trap")}))
    assert trapped["state"] == "Failed" and trapped["error"]
    assert served.ask(json.dumps(task))["state"] == "Completed"  # a fault ends only its task


def test_end_of_input_ends_the_worker(served: Served) -> None:
    assert "ready" in served.read()
    served.tasks.close()
    served.thread.join(30)
    assert served.code == [0]
    assert served.results.readline() == b""


def test_no_pipes_is_a_usage_error() -> None:
    assert serve({}) == 2


def test_a_worker_with_an_inference_left_running_retires(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "ready" in served.read()
    task = json.dumps({"id": "t1", "wasm": inline("hello")})
    served.tasks.write(task.encode() + b"\n")
    served.tasks.flush()
    assert served.read()["retire"] is False
    monkeypatch.setattr(lingering, "count", lambda: 1)  # as after a task whose inference ran on
    served.tasks.write(task.encode() + b"\n")
    served.tasks.flush()
    answer = served.read()
    assert answer["retire"] is True and answer["summary"]["state"] == "Completed"
    served.thread.join(30)
    assert served.code == [0]  # it left without waiting for more input
