"""Manager mode: selection of proplets, Propeller's start/stop payloads, results and liveness.

Written from Propeller's manager/service.go (StartTask, StopTask, publishStart's startPayload,
updateResultsHandler, updateLivenessHandler), pkg/scheduler/roundrobin.go and pkg/proplet
(AliveTimeout), and the Rust proplet's StartRequest (proplet/src/types.rs).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR, TaskPhase
from wasinn_operator.api.propeller import TaskInput
from wasinn_operator.mqtt import MQTTSettings
from wasinn_operator.shim import (
    ArtifactStore,
    BadRequestError,
    ConflictError,
    NotFoundError,
    TaskService,
)
from wasinn_operator.shim.bridge import Bridge
from wasinn_operator.shim.dispatch import START_TOPIC, STOP_TOPIC, Dispatcher
from wasinn_operator.shim.errors import UnavailableError
from wasinn_operator.shim.kubernetes import KubernetesStore
from wasinn_operator.shim.local import LocalBackend
from wasinn_operator.shim.store import now
from wasinn_operator.shim.taskmetrics import TaskMetricsStore

pytestmark = pytest.mark.unit
WASM = b"\0asm\1\0\0\0"
FILE = base64.b64encode(WASM).decode()
OWN = "11111111-1111-4111-8111-111111111111"
EDGE = "22222222-2222-4222-8222-222222222222"
EDGE2 = "33333333-3333-4333-8333-333333333333"


class Channel:
    """Stands in for the bridge's publisher: records what would go to the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.up = True

    def __call__(self, suffix: str, body: Mapping[str, Any]) -> bool:
        if self.up:
            self.sent.append((suffix, dict(body)))
        return self.up


@pytest.fixture
def channel() -> Channel:
    return Channel()


def make_service(tmp_path: Path, channel: Channel, round_robin: bool = False) -> TaskService:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, OWN)
    service = TaskService(backend, artifacts, OWN)
    service.dispatcher = Dispatcher(
        backend, artifacts, service.registry, OWN, round_robin=round_robin
    )
    service.dispatcher.connect(channel)
    return service


@pytest.fixture
def service(tmp_path: Path, channel: Channel) -> Iterator[TaskService]:
    made = make_service(tmp_path, channel)
    yield made
    made.store.close()


def classify(service: TaskService, **fields: Any) -> str:
    body = TaskInput.model_validate(
        {
            "name": "classify",
            "file": FILE,
            "cli_args": ["-S", "nn"],
            "inputs": ["--model", "efficientnet-lite0", "/models/x.f32"],
            "env": {"A": "1"},
            **fields,
        }
    )
    return service.create(body).id


def dead(service: TaskService, proplet_id: str) -> None:
    """A heartbeat older than Propeller's AliveTimeout (10 s) as the proplet's last."""
    service.registry.heartbeat(proplet_id, at=now() - timedelta(seconds=60))


def test_a_named_external_proplet_gets_propellers_start_payload(
    service: TaskService, channel: Channel
) -> None:
    service.registry.register(EDGE, namespace="edge", metadata={"os": "linux"})
    task_id = classify(service, proplet_id=EDGE)
    service.start(task_id)
    # manager/service.go startPayload: omitempty on image_url, file, inputs, env,
    # kbs_resource_path, monitoring_profile, proplet_id; `file` is Go's []byte, i.e. base64;
    # `state` is the task's state before the start (Pending).
    assert channel.sent == [
        (
            START_TOPIC,
            {
                "id": task_id,
                "name": "classify",
                "state": 0,
                "file": FILE,
                "inputs": ["--model", "efficientnet-lite0", "/models/x.f32"],
                "cli_args": ["-S", "nn"],
                "broadcast": False,
                "daemon": False,
                "latent": False,
                "env": {"A": "1"},
                "encrypted": False,
                "proplet_id": EDGE,
            },
        )
    ]
    task = service.get(task_id)
    # markTaskRunning: Running with a start time, pinned to the proplet; bumpPropletTaskCount.
    assert (task.state, task.proplet_id) == (TaskPhase.RUNNING.state, EDGE)
    assert task.start_time.year > 1
    assert service.proplet(EDGE).task_count == 1
    assert service.dispatcher is not None and service.dispatcher.owns(task_id)


def test_a_named_proplet_must_be_alive_and_known(service: TaskService, channel: Channel) -> None:
    dead(service, EDGE)
    task_id = classify(service, proplet_id=EDGE)
    # StartTask: "specified proplet %s is not alive"; nothing is published or changed.
    with pytest.raises(ConflictError, match=f"specified proplet {EDGE} is not alive"):
        service.start(task_id)
    assert service.get(task_id).state == TaskPhase.PENDING.state
    unknown = classify(service, proplet_id=EDGE2)
    with pytest.raises(NotFoundError, match=f"proplet {EDGE2} not found"):
        service.start(unknown)
    assert channel.sent == []


def test_a_result_ends_the_run_as_updateResultsHandler_decides(  # noqa: N802
    service: TaskService, channel: Channel
) -> None:
    assert service.dispatcher is not None
    service.registry.register(EDGE)
    done, failed = classify(service, proplet_id=EDGE), classify(service, proplet_id=EDGE)
    service.start(done)
    service.start(failed)
    assert service.proplet(EDGE).task_count == 2
    dispatcher = service.dispatcher
    # Only the proplet that holds the run may end it; the shim's own results coming back on
    # the channel are not reports.
    assert not dispatcher.on_result({"task_id": done, "proplet_id": EDGE2, "results": "x"})
    assert not dispatcher.on_result({"task_id": done, "proplet_id": OWN, "results": "x"})
    ok = {"task_id": done, "proplet_id": EDGE, "results": "tiger cat", "error": None}
    assert dispatcher.on_result(ok)
    bad = {"task_id": failed, "proplet_id": EDGE, "results": "", "error": "trap: unreachable"}
    assert dispatcher.on_result(bad)
    assert not dispatcher.on_result(ok)  # a redelivery changes nothing
    first, second = service.get(done), service.get(failed)
    assert (first.state, first.results, first.error) == (3, "tiger cat", None)
    assert (second.state, second.results, second.error) == (4, "", "trap: unreachable")
    assert service.proplet(EDGE).task_count == 0
    # The proplet published the result itself: the outbox does not publish it again.
    assert service.store.unpublished() == []


def test_broadcast_goes_to_every_proplet_and_the_first_result_wins(
    service: TaskService, channel: Channel
) -> None:
    assert service.dispatcher is not None
    service.registry.register(EDGE)
    service.registry.register(EDGE2)
    task_id = classify(service, broadcast=True)
    service.start(task_id)
    ((topic, body),) = channel.sent
    # publishStart(ctx, t, ""): no proplet_id, broadcast true.
    assert topic == START_TOPIC and body["broadcast"] is True and "proplet_id" not in body
    assert service.proplet(EDGE).task_count == service.proplet(EDGE2).task_count == 1
    assert service.dispatcher.on_result({"task_id": task_id, "proplet_id": EDGE2, "results": "a"})
    assert not service.dispatcher.on_result(
        {"task_id": task_id, "proplet_id": EDGE, "results": "b"}
    )
    assert service.get(task_id).results == "a"


def test_without_alive_proplets_a_broadcast_runs_on_the_backend(
    service: TaskService, channel: Channel
) -> None:
    dead(service, EDGE)
    task_id = classify(service, broadcast=True)
    service.start(task_id)
    assert channel.sent == []
    assert service.get(task_id).state in (TaskPhase.SCHEDULED.state, TaskPhase.RUNNING.state)


def test_unaddressed_tasks_stay_on_the_backend_by_default(
    service: TaskService, channel: Channel
) -> None:
    service.registry.register(EDGE)
    for _ in range(3):
        service.start(classify(service))
    assert channel.sent == []


def test_round_robin_takes_turns_with_the_backend(tmp_path: Path, channel: Channel) -> None:
    service = make_service(tmp_path, channel, round_robin=True)
    try:
        service.registry.register(EDGE)
        dead(service, EDGE2)  # a dead proplet is skipped (roundrobin.go)
        started = [classify(service) for _ in range(4)]
        for task_id in started:
            service.start(task_id)
        sent = [body["id"] for topic, body in channel.sent if topic == START_TOPIC]
        assert sent == [started[0], started[2]]
        assert all(body["proplet_id"] == EDGE for _, body in channel.sent)
        assert service.get(started[1]).proplet_id == OWN
    finally:
        service.store.close()


def test_stop_publishes_propellers_stop_and_ends_the_run(
    service: TaskService, channel: Channel
) -> None:
    service.registry.register(EDGE)
    task_id = classify(service, proplet_id=EDGE)
    service.start(task_id)
    service.stop(task_id)
    # StopTask: {id, broadcast, proplet_id} on control/manager/stop.
    assert channel.sent[-1] == (STOP_TOPIC, {"id": task_id, "broadcast": False, "proplet_id": EDGE})
    task = service.get(task_id)
    assert (task.state, task.error) == (TaskPhase.FAILED.state, STOPPED_ERROR)
    assert service.proplet(EDGE).task_count == 0
    assert service.store.unpublished() == []  # the proplet reports its cancellation


def test_a_proplet_that_stops_heartbeating_fails_its_runs(
    service: TaskService, channel: Channel
) -> None:
    assert service.dispatcher is not None
    service.registry.register(EDGE)
    task_id = classify(service, proplet_id=EDGE)
    service.start(task_id)
    service.dispatcher.sweep()
    assert service.get(task_id).state == TaskPhase.RUNNING.state  # alive: nothing happens
    dead(service, EDGE)
    service.dispatcher.sweep()
    task = service.get(task_id)
    assert task.state == TaskPhase.FAILED.state
    assert task.error is not None
    assert task.error.startswith(f"proplet {EDGE} stopped heartbeating (last alive at ")
    assert task.error.endswith("while running the task")
    assert channel.sent[-1] == (STOP_TOPIC, {"id": task_id, "broadcast": False, "proplet_id": EDGE})
    # A late result from it changes nothing.
    late = {"task_id": task_id, "proplet_id": EDGE, "results": "late", "error": None}
    assert not service.dispatcher.on_result(late)
    assert service.get(task_id).state == TaskPhase.FAILED.state


def test_an_unacknowledged_start_fails_the_run(service: TaskService, channel: Channel) -> None:
    service.registry.register(EDGE)
    task_id = classify(service, proplet_id=EDGE)
    channel.up = False
    with pytest.raises(UnavailableError, match="failed to publish start message"):
        service.start(task_id)
    task = service.get(task_id)
    assert task.state == TaskPhase.FAILED.state
    assert task.error == "failed to publish start message: the broker did not acknowledge it"
    assert service.proplet(EDGE).task_count == 0


def test_the_bridge_feeds_the_registry_from_proplets_messages(service: TaskService) -> None:
    settings = MQTTSettings("127.0.0.1", 1, "dom", "chan", instance_id=OWN)
    bridge = Bridge(settings, service)
    try:
        # createPropletHandler: the id and the announced metadata.
        bridge._report("control/proplet/create", {"proplet_id": EDGE, "metadata": {"os": "x"}})
        assert service.proplet(EDGE).alive and service.proplet(EDGE).metadata == {"os": "x"}
        # updateLivenessHandler registers an unknown proplet from its heartbeat.
        bridge._report("control/proplet/alive", {"proplet_id": EDGE2, "status": "alive"})
        assert service.proplet(EDGE2).alive
        # The shim's own announcement is not an external proplet.
        bridge._report("control/proplet/create", {"proplet_id": OWN})
        assert [p.id for p in service.registry.external()] == [EDGE, EDGE2]
        # A last will ("offline") is no heartbeat (Propeller counts it as one: a fix).
        dead(service, EDGE2)
        bridge._report("control/proplet/alive", {"proplet_id": EDGE2, "status": "offline"})
        assert not service.proplet(EDGE2).alive
        bridge._report("control/proplet/metrics", {"proplet_id": EDGE, "cpu_metrics": {}})
        samples, total = service.registry.metrics(EDGE, 0, 10)
        assert total == 1 and samples[0]["cpu_metrics"] == {}
        # Proplets are untrusted: metrics of unknown ids, ids over 1024 characters and
        # metadata beyond Propeller's PropletMetadata fields are not kept.
        stranger = "44444444-4444-4444-8444-444444444444"
        bridge._report("control/proplet/metrics", {"proplet_id": stranger})
        assert service.registry.metrics(stranger, 0, 10) == ([], 0)
        bridge._report("control/proplet/alive", {"proplet_id": "x" * 1025})
        assert len(service.registry.external()) == 2
        announced = {"os": "linux", "tags": ["a", 1], "total_memory_bytes": 8, "blob": "y" * 9}
        bridge._report("control/proplet/create", {"proplet_id": EDGE, "metadata": announced})
        kept = {"os": "linux", "tags": ["a"], "total_memory_bytes": 8}
        assert service.proplet(EDGE).metadata == kept
    finally:
        bridge.client.loop_stop()


def test_the_kubernetes_backend_holds_no_run_of_the_shim_itself() -> None:
    # A deployed latent task would be a run of the shim itself: the operator owns the status,
    # so the kubernetes backend records runs in the cluster or on external proplets only.
    store = object.__new__(KubernetesStore)  # refused before anything of the cluster is read
    with pytest.raises(BadRequestError, match=r"^task t: the kubernetes backend records runs"):
        store.dispatch("t", OWN)


def test_task_metrics_of_dispatched_tasks_are_kept(service: TaskService) -> None:
    # manager/service.go handleTaskMetrics keeps a proplet's task_metrics for the task.
    assert service.dispatcher is not None
    metrics = TaskMetricsStore()
    service.dispatcher.task_metrics = metrics
    service.registry.register(EDGE)
    task_id = classify(service, proplet_id=EDGE)
    service.start(task_id)
    service.dispatcher.on_result({"task_id": task_id, "proplet_id": EDGE, "results": "x"})
    sample = {
        "task_id": task_id,
        "proplet_id": EDGE,
        "metrics": {"uptime_seconds": 2, "cpu_percent": 7, "rogue": "x", "thread_count": "3"},
        "aggregated": None,
        "timestamp": "2026-12-06T05:00:00.123456789Z",
        "extra": 1,
    }
    assert service.dispatcher.on_task_metrics(sample)  # also after the result
    # Decoded as Propeller's ProcessMetrics: its seven fields, zeros filled, unknown keys and
    # values of the wrong type dropped, a null `aggregated` left out (Go's omitempty).
    zero = {"cpu_percent": 0.0, "memory_bytes": 0, "memory_percent": 0.0, "disk_read_bytes": 0,
            "disk_write_bytes": 0, "uptime_seconds": 0, "thread_count": 0}  # fmt: skip
    kept = {"task_id": task_id, "proplet_id": EDGE, "timestamp": "2026-12-06T05:00:00.123456Z"}
    assert metrics.page(task_id, 0, 10) == (
        [{**kept, "metrics": {**zero, "uptime_seconds": 2, "cpu_percent": 7.0}}],
        1,
    )
    # Whole numbers cut toward zero in their Go type's range; `aggregated` when an object;
    # file_descriptor_count only when not zero.
    sample = {
        "task_id": task_id,
        "proplet_id": EDGE,
        "metrics": {"memory_bytes": -5, "uptime_seconds": 2.9, "file_descriptor_count": 4},
        "aggregated": {"sample_count": 3, "max_cpu_usage": 1.5, "x": 1},
    }
    assert service.dispatcher.on_task_metrics(sample)
    newest = metrics.page(task_id, 0, 1)[0][0]
    assert newest["metrics"] == {**zero, "uptime_seconds": 2, "file_descriptor_count": 4}
    assert newest["aggregated"] == {
        "avg_cpu_usage": 0.0, "max_cpu_usage": 1.5, "avg_memory_usage": 0,
        "max_memory_usage": 0, "total_disk_read": 0, "total_disk_write": 0, "sample_count": 3,
    }  # fmt: skip
    assert newest["timestamp"].endswith("Z")  # no timestamp: the time it arrived
    assert not service.dispatcher.on_task_metrics({"task_id": task_id, "proplet_id": 7})
    other = classify(service)
    assert not service.dispatcher.on_task_metrics({"task_id": other, "proplet_id": EDGE})
    assert metrics.page(other, 0, 10) == ([], 0)
