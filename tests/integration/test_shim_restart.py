"""Nothing is lost: not results while the broker is down, not tasks across a shim restart."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR
from wasinn_operator.shim.taskfields import redact

from .conftest import (
    CHELSEA,
    FAILED,
    TOPIC_PREFIX,
    DurableSubscriber,
    PersistentBroker,
    Shim,
    ShimBackend,
    mqtt_env,
)

pytestmark = pytest.mark.integration
TENSORS = ["chelsea", "coffee", "grace_hopper"]


def test_broker_restart_loses_no_result(
    backend: ShimBackend,
    make_shim: Callable[..., Shim],
    persistent_broker: PersistentBroker,
    classify_b64: str,
) -> None:
    results = DurableSubscriber(persistent_broker.port, TOPIC_PREFIX + "control/proplet/results")
    shim = make_shim(**mqtt_env(persistent_broker))
    try:
        ids = [
            shim.create(
                name,
                file=classify_b64,
                inputs=[f"/models/efficientnet-lite0/tensors/{name}.rgb.f32"],
            )
            for name in TENSORS
        ]
        # Broker down before the runs start, so every result is produced while it is away (a
        # warm local worker can finish a task before a stop issued after the starts).
        persistent_broker.stop()
        for task_id in ids:
            shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
        finals = {task_id: shim.wait_state(task_id) for task_id in ids}
        assert all(task["state"] == 3 for task in finals.values()), finals
        persistent_broker.start()
        payloads = results.wait_until(lambda got: {p["task_id"] for p in got} >= set(ids))
    finally:
        results.close()
    for task_id in ids:
        published = next(p for p in payloads if p["task_id"] == task_id)
        assert published["results"] == finals[task_id]["results"]
        assert published["error"] is None


def test_shim_restart_loses_no_task_or_result(
    backend: ShimBackend,
    make_shim: Callable[..., Shim],
    persistent_broker: PersistentBroker,
    classify_b64: str,
    spin_wasm: bytes,
) -> None:
    results = DurableSubscriber(persistent_broker.port, TOPIC_PREFIX + "control/proplet/results")
    shim = make_shim(**mqtt_env(persistent_broker))
    try:
        done = shim.create("done", file=classify_b64, inputs=CHELSEA, env={"K": "v"})
        shim.http.post(f"/tasks/{done}/start").raise_for_status()
        finished = shim.wait_state(done)
        pending = shim.create("pending", cli_args=["-S", "nn"], inputs=[1, "two"])
        spin = shim.create("spin", file=base64.b64encode(spin_wasm).decode())
        shim.http.post(f"/tasks/{spin}/start").raise_for_status()
        shim.wait_state(spin, (2,))
        before = {t["id"]: t for t in shim.tasks()}
        shim.stop()  # SIGTERM with a task running
        shim.start()
        after = {t["id"]: t for t in shim.tasks()}
        assert list(after) == list(before)  # same tasks, same order
        assert after[done] == before[done]
        assert shim.task(done)["results"] == finished["results"]
        assert after[pending] == before[pending]
        spun = shim.task(spin)
        # Its module survived too (answered redacted, as Propeller does).
        assert spun["file"] == redact(base64.b64encode(spin_wasm).decode())
        if backend.name == "local":
            # The shim ran the task: its run ended with the shim, as Failed "interrupted", and
            # that failure is published.
            assert spun["state"] == 4
            assert spun["error"].startswith("interrupted")
            results.wait_until(lambda got: any(p["task_id"] == spin for p in got))
        else:
            # kubernetes: the WasiNNTask and its Pod are the truth and carry on without the
            # shim; the restarted shim sees the run still going and can stop it.
            assert spun["state"] == 2, spun
            assert shim.http.post(f"/tasks/{spin}/stop").json() == {"stopped": True}
            assert shim.wait_state(spin, (FAILED,))["error"] == STOPPED_ERROR
        # The shim still runs tasks.
        shim.http.post(f"/tasks/{done}/start").raise_for_status()
        again = shim.wait_state(done)
        assert again["results"] == finished["results"]
    finally:
        results.close()
