"""Warm execution, the operator's side: refusals, assignment, and attempts read from reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.policy import TaskPolicy
from wasinn_operator.api.summary import RunSummary
from wasinn_operator.api.warm import REPORT_ANNOTATION, WarmReport, read_report, task_document
from wasinn_operator.controller import Facts, OperatorSettings, Plan, reconcile, warm
from wasinn_operator.controller.metrics import WarmCollector
from wasinn_operator.controller.settings import OperatorSettings as Settings
from wasinn_operator.controller.state import Assignments

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
UID = "6a0c9f1e-1111-4222-8333-444455556666"
WARM = OperatorSettings(
    warm_enabled=True, warm_namespace="wasinn", policy=TaskPolicy(allow_model_origins=("pvc://",))
)
START = "2026-11-25T11:59:59Z"


def task(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    report: WarmReport | None = None,
) -> dict[str, Any]:
    notes = {REPORT_ANNOTATION: report.to_annotation()} if report else {}
    return {
        "metadata": {
            "name": "cat",
            "namespace": "ml",
            "uid": UID,
            "generation": 1,
            "annotations": notes,
        },
        "spec": {"wasm": {"url": "http://shim/a"}, "execution": "warm", **(spec or {})},
        "status": status or {},
    }


def worker(name: str = "w-a", uid: str = "uid-a", restarts: int = 0, **kw: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": uid,
            "labels": {"wasinn.dev/warm-pool": "default"},
            **kw.pop("meta", {}),
        },
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": kw.pop("phase", "Running"),
            "conditions": [{"type": "Ready", "status": kw.pop("ready", "True")}],
            "containerStatuses": [{"name": "worker", "restartCount": restarts}],
        },
    }


def run(body: dict[str, Any], settings: OperatorSettings = WARM, **facts: Any) -> Plan:
    facts.setdefault("pods", [])
    return reconcile(body, Facts(now=facts.pop("now", NOW), **facts), settings)


def assigned(attempt: int = 1, phase: str = "Scheduled", **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "attempts": attempt,
        "podName": "w-a",
        "worker": {"pod": "w-a", "uid": "uid-a", "pool": "default", "restarts": 0},
        **extra,
    }


def record(body: dict[str, Any], pod: dict[str, Any] | None, now: datetime = NOW) -> list[Any]:
    found = warm.attempt_record(body["status"], pod, read_report(body), now, 60)
    return [found] if found else []


def summary(state: str = "Completed", **kw: Any) -> str:
    return RunSummary(state=state, exitCode=kw.pop("exitCode", 0), **kw).to_message()  # type: ignore[arg-type]


def test_a_warm_task_is_assigned_to_the_least_loaded_ready_worker() -> None:
    workers = [
        worker("w-a", "uid-a"),
        worker("w-b", "uid-b"),
        worker("w-c", "uid-c", ready="False"),
    ]
    plan = run(task(), workers=workers, load={"w-a": 3})
    assert plan.create_pod is None and plan.create_configmap is None
    assert plan.status["phase"] == "Scheduled"
    assert plan.status["worker"] == {
        "pod": "w-b",
        "uid": "uid-b",
        "pool": "default",
        "restarts": 0,
        "engine": "embedded",
    }
    assert plan.status["podName"] == "w-b" and plan.status["nodeName"] == "node-1"
    assert plan.status["attempts"] == 1


def test_without_a_ready_worker_the_task_waits_naming_its_pool() -> None:
    plan = run(task(), workers=[worker(ready="False")])
    assert plan.status["phase"] == "Pending"
    scheduled = next(c for c in plan.status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "NoWarmWorker" and "pool default" in scheduled["message"]
    assert plan.requeue_after == WARM.resync_seconds


def test_warm_is_refused_unless_the_chart_enabled_it() -> None:
    plan = run(task(), settings=OperatorSettings(), workers=[worker()])
    assert plan.status["phase"] == "Failed"
    assert "spec.execution: warm is not enabled" in plan.status["error"]
    assert "allowed: pod" in plan.status["error"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"wasm": {"configMapKeyRef": {"name": "m", "key": "k"}}}, "spec.wasm.configMapKeyRef"),
        ({"models": {"claimName": "other"}}, "spec.models"),
        ({"device": "GPU"}, "spec.device"),
        ({"args": ["--target", "gpu"]}, "spec.device/args --target"),
        ({"daemon": True}, "spec.daemon"),
        ({"resources": {"limits": {"memory": "1Gi"}}}, "spec.resources"),
        ({"nodeSelector": {"zone": "b"}}, "spec.nodeSelector"),
        (
            {"modelSources": [{"name": "m", "uri": "pvc://c/m"}]},
            "spec.modelSources[0]",
        ),
    ],
)
def test_what_a_worker_cannot_honour_is_refused_by_field(spec: dict[str, Any], field: str) -> None:
    plan = run(task(spec), workers=[worker()])
    assert plan.status["phase"] == "Failed", plan.status
    assert plan.status["error"].startswith(field), plan.status["error"]
    assert "execution: pod" in plan.status["error"]
    assert "worker" not in plan.status


def test_a_pool_is_chosen_by_the_task_node_selector() -> None:
    settings = Settings(warm_enabled=True, warm_pools=(("cpu", ()), ("avx", (("cpu", "avx512"),))))
    spec = WasiNNTaskSpec.model_validate(
        {"wasm": {"url": "http://a"}, "nodeSelector": {"cpu": "avx512"}}
    )
    assert warm.pool_for(spec, settings) == "avx"
    plain = WasiNNTaskSpec.model_validate({"wasm": {"url": "http://a"}})
    assert warm.pool_for(plain, settings) == "cpu"


def test_the_default_execution_comes_from_the_settings() -> None:
    settings = OperatorSettings(warm_enabled=True, default_execution="warm")
    body = task()
    del body["spec"]["execution"]
    plan = run(body, settings=settings, workers=[worker()])
    assert plan.status["worker"]["pod"] == "w-a"
    assert run(body, settings=OperatorSettings()).create_pod is not None


def test_a_default_of_warm_needs_warm_enabled() -> None:
    with pytest.raises(ValueError, match="WASINN_WARM_ENABLED"):
        OperatorSettings(default_execution="warm")


def test_started_report_makes_the_task_running_with_its_start_time() -> None:
    report = WarmReport(attempt=1, worker="uid-a", startTime=START)
    body = task(status=assigned(), report=report)
    plan = run(body, pods=record(body, worker()))
    assert plan.status["phase"] == "Running"
    assert plan.status["startTime"] == START


def test_a_completed_report_completes_the_task_with_its_results() -> None:
    done = summary(stdout="tabby cat 0.91\n", digest="sha256:" + "a" * 64)
    report = WarmReport(attempt=1, worker="uid-a", startTime=START, summary=done)
    body = task(status=assigned(phase="Running", startTime=START), report=report)
    plan = run(body, pods=record(body, worker()))
    assert plan.status["phase"] == "Completed"
    assert plan.status["results"] == "tabby cat 0.91\n"
    assert plan.status["exitCode"] == 0
    assert plan.status["digest"] == "sha256:" + "a" * 64
    assert next(c for c in plan.status["conditions"] if c["type"] == "Complete")["status"] == "True"


def test_a_report_of_another_attempt_or_worker_is_ignored() -> None:
    for report in (
        WarmReport(attempt=1, worker="uid-a", startTime=START, summary=summary()),
        WarmReport(attempt=2, worker="uid-x", startTime=START, summary=summary()),
    ):
        body = task(status=assigned(attempt=2), report=report)
        plan = run(body, pods=record(body, worker()))
        assert plan.status["phase"] == "Scheduled", report


def test_a_failed_report_is_retried_per_backoff_limit() -> None:
    failed = summary("Failed", exitCode=3, error="exited with code 3", reason="ExitCode")
    report = WarmReport(attempt=1, worker="uid-a", startTime=START, summary=failed)
    body = task({"backoffLimit": 1}, status=assigned(phase="Running"), report=report)
    plan = run(body, pods=record(body, worker()))
    assert plan.status["phase"] == "Pending"
    assert plan.status["failedAttempts"] == 1 and plan.status["exitCode"] == 3
    assert "retryAfter" in plan.status


def test_a_deadline_reported_by_the_worker_fails_the_task() -> None:
    late = summary("Failed", exitCode=124, error="timed out", reason="DeadlineExceeded")
    report = WarmReport(attempt=1, worker="uid-a", startTime=START, summary=late)
    body = task(
        {"timeoutSeconds": 5, "backoffLimit": 3}, status=assigned(phase="Running"), report=report
    )
    body["status"]["phase"] = "Running"
    plan = run(body, pods=record(body, worker()))
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"


@pytest.mark.parametrize(
    ("pod", "said"),
    [
        (None, "is gone"),
        (worker(uid="uid-new"), "is gone"),
        (worker(restarts=1), "restarted"),
        (worker(meta={"deletionTimestamp": START}), "being deleted"),
        (worker(phase="Failed"), "ended"),
    ],
)
def test_a_worker_that_dies_holding_an_attempt_fails_it_and_retries(
    pod: dict[str, Any] | None, said: str
) -> None:
    report = WarmReport(attempt=1, worker="uid-a", startTime=START)
    body = task({"backoffLimit": 2}, status=assigned(phase="Running"), report=report)
    plan = run(body, pods=record(body, pod))
    assert plan.status["phase"] == "Pending"
    assert plan.status["failedAttempts"] == 1
    assert said in plan.status["error"]
    assert "exitCode" not in plan.status
    # The next attempt goes to a live worker.
    retry = task({"backoffLimit": 2}, status={**plan.status, "retryAfter": START})
    again = run(retry, workers=[worker("w-b", "uid-b")])
    assert again.status["attempts"] == 2 and again.status["worker"]["pod"] == "w-b"


def test_a_dead_worker_beyond_the_backoff_limit_fails_the_task() -> None:
    body = task(status=assigned())
    plan = run(body, pods=record(body, None))
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"


def test_a_worker_that_hangs_past_the_deadline_fails_the_attempt() -> None:
    report = WarmReport(attempt=1, worker="uid-a", startTime=START)
    body = task({"timeoutSeconds": 60}, status=assigned(phase="Running"), report=report)
    late = NOW + timedelta(seconds=60 + warm.DEADLINE_GRACE_SECONDS + 1)
    plan = run(body, now=late, pods=record(body, worker(), now=late))
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    on_time = run(body, pods=record(body, worker()))
    assert on_time.status["phase"] == "Running"


def test_suspending_a_warm_task_never_deletes_its_worker() -> None:
    report = WarmReport(attempt=1, worker="uid-a", startTime=START)
    body = task({"suspend": True}, status=assigned(phase="Running"), report=report)
    plan = run(body, pods=record(body, worker()))
    assert plan.delete_pods == []
    assert plan.status["phase"] == "Failed"
    assert plan.status["error"] == "task was stopped before completion"


def test_the_task_document_carries_the_spec_and_the_resolved_defaults() -> None:
    body = task(
        {"args": ["x"], "env": {"K": "V"}, "cliArgs": ["-S", "nn"]},
        status=assigned(worker={"pod": "w-a", "uid": "u", "pool": "p", "timeoutSeconds": 9}),
    )
    body["metadata"]["labels"] = {"wasinn.dev/propeller-id": "p-1"}
    document = task_document(body)
    assert document == {
        "wasm": {"url": "http://shim/a"},
        "cliArgs": ["-S", "nn"],
        "args": ["x"],
        "env": {"K": "V"},
        "id": "p-1",
        "name": "cat",
        "timeoutSeconds": 9,
    }


def test_queue_depth_counts_tasks_not_yet_started_per_pool() -> None:
    collector = WarmCollector()
    collector.track("a", "default", "queued")
    collector.track("b", "default", "queued")
    collector.track("c", "default", "running")
    collector.track("d", "gpu", "queued")
    collector.track("b", "default", None)
    families = {f.name: {s.labels["pool"]: s.value for s in f.samples} for f in collector.collect()}
    assert families["wasinn_warm_queue_depth"] == {"default": 1, "gpu": 1}
    assert families["wasinn_warm_running"] == {"default": 1, "gpu": 0}
    assert warm.queue_state({"phase": "Pending"}) == "queued"
    assert warm.queue_state({"phase": "Running"}) == "running"
    assert warm.queue_state({"phase": "Completed"}) is None


def test_pools_setting_is_parsed_and_checked() -> None:
    settings = Settings.from_env(
        {"WASINN_WARM_ENABLED": "true", "WASINN_WARM_POOLS": json.dumps({"a": {"x": "1"}})}
    )
    assert settings.warm_enabled and settings.warm_pools == (("a", (("x", "1"),)),)
    with pytest.raises(ValueError, match="WASINN_WARM_POOLS"):
        Settings.from_env({"WASINN_WARM_POOLS": "[1]"})
    with pytest.raises(ValueError, match="WASINN_WARM_ENABLED"):
        Settings.from_env({"WASINN_WARM_ENABLED": "maybe"})


def test_assignments_count_each_workers_attempts_as_they_change() -> None:
    held = Assignments()
    held.hold("u1", "w1", "ml", "a")
    held.hold("u2", "w1", "ml", "b")
    held.hold("u3", "w2", "ml", "c")
    assert held.load() == {"w1": 2, "w2": 1}
    held.hold("u2", "w2", "ml", "b")  # a retry on another worker moves the attempt
    assert held.load() == {"w1": 1, "w2": 2}
    assert held.on("w2") == [("u3", "ml", "c"), ("u2", "ml", "b")]
    held.drop("u1")
    held.drop("u1")  # twice (an end seen again) changes nothing
    assert held.load() == {"w2": 2}
    assert held.on("w1") == []
    for uid in ("u2", "u3"):
        held.drop(uid)
    assert held.load() == {}
