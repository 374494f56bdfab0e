"""`?wait=SECONDS` on `GET /tasks/{id}` and its results: the answer once the run ended."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR

from .conftest import CHELSEA, FAILED, Shim
from .test_shim_errors import error

pytestmark = pytest.mark.integration
ACTIVE = (1, 2)  # Scheduled, Running


def waiting(shim: Shim, count: int) -> None:
    """Until the shim's gauge counts `count` waiting requests (so a change comes during one)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = shim.http.get("/metrics").text
        found = re.search(r"^wasinn_shim_waiting_requests (\S+)$", text, re.MULTILINE)
        assert found, "no wasinn_shim_waiting_requests gauge in /metrics"
        if float(found.group(1)) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the shim never had {count} waiting request(s)")


def test_wait_answers_once_the_run_ended(make_shim: Callable[..., Shim], classify_b64: str) -> None:
    shim = make_shim()
    task_id = shim.create("classify", file=classify_b64, inputs=CHELSEA)
    # A task that is not running has nothing to wait for: the answer is the task as it is
    # (the request's own timeout, below the wait, would fail the test otherwise).
    pending = shim.http.get(f"/tasks/{task_id}", params={"wait": 60}, timeout=30)
    assert (pending.status_code, pending.json()["state"]) == (200, 0), pending.text
    for bad, why in (("-1", "greater than or equal to 0"), ("61", "less than or equal to 60"),
                     ("soon", "number"), ("nan", "")):  # fmt: skip
        error(shim.http.get(f"/tasks/{task_id}", params={"wait": bad}), 400, "wait", why)
        error(shim.http.get(f"/tasks/{task_id}/results", params={"wait": bad}), 400, "wait")
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    ended = shim.http.get(f"/tasks/{task_id}", params={"wait": 60}, timeout=90)
    assert ended.status_code == 200, ended.text
    task = ended.json()
    assert task["state"] == 3, task  # one request: no poll needed
    assert "tiger cat" in task["results"]
    results = shim.http.get(f"/tasks/{task_id}/results", params={"wait": 60}, timeout=30)
    assert results.json() == {"results": task["results"]}
    # The next run's results, waited for at its results endpoint.
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    again = shim.http.get(f"/tasks/{task_id}/results", params={"wait": 60}, timeout=90)
    assert "tiger cat" in again.json()["results"]
    assert shim.task(task_id)["state"] == 3


def test_wait_gives_up_or_hears_the_stop(make_shim: Callable[..., Shim], spin_wasm: bytes) -> None:
    shim = make_shim()
    task_id = shim.create("spin", file=base64.b64encode(spin_wasm).decode())
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    shim.wait_state(task_id, (2,))
    # The wait passes: the task as it is, still running.
    running = shim.http.get(f"/tasks/{task_id}", params={"wait": 0.5})
    assert (running.status_code, running.json()["state"]) == (200, 2), running.text
    assert shim.http.get(f"/tasks/{task_id}/results", params={"wait": 0.5}).json() == {
        "results": None
    }
    # A stop from another client ends the wait with the stopped task.
    answers: list[dict[str, object]] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            shim.http.get(f"/tasks/{task_id}", params={"wait": 60}, timeout=90).json()
        )
    )
    waiter.start()
    waiting(shim, 1)
    assert shim.http.post(f"/tasks/{task_id}/stop").json() == {"stopped": True}
    waiter.join(120)
    assert len(answers) == 1
    assert (answers[0]["state"], answers[0]["error"]) == (FAILED, STOPPED_ERROR)
    # A deleted task's waiter hears of it too: 404.
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    shim.wait_state(task_id, ACTIVE)
    gone: list[int] = []
    waiter = threading.Thread(
        target=lambda: gone.append(
            shim.http.get(f"/tasks/{task_id}", params={"wait": 60}, timeout=90).status_code
        )
    )
    waiter.start()
    waiting(shim, 1)
    assert shim.http.delete(f"/tasks/{task_id}").status_code == 204
    waiter.join(120)
    assert gone == [404]
    waiting(shim, 0)
