"""Nothing is lost: not results while the broker is down, not tasks across a shim restart."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from .conftest import (
    CHELSEA,
    TOPIC_PREFIX,
    DurableSubscriber,
    PersistentBroker,
    Shim,
    mqtt_env,
)

pytestmark = pytest.mark.integration
TENSORS = ["chelsea", "coffee", "grace_hopper"]


def test_broker_restart_loses_no_result(
    make_shim: Callable[..., Shim], persistent_broker: PersistentBroker, classify_b64: str
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
        for task_id in ids:
            shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
        persistent_broker.stop()  # while the tasks run
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
        assert after[done]["results"] == finished["results"]
        assert after[pending] == before[pending]
        interrupted = shim.task(spin)
        assert interrupted["state"] == 4
        assert interrupted["error"].startswith("interrupted")
        assert base64.b64decode(interrupted["file"]) == spin_wasm  # its module survived too
        # The interrupted run's failure is published, and the shim still runs tasks.
        results.wait_until(lambda got: any(p["task_id"] == spin for p in got))
        shim.http.post(f"/tasks/{done}/start").raise_for_status()
        again = shim.wait_state(done)
        assert again["results"] == finished["results"]
    finally:
        results.close()
