"""The task state machine: every transition, from facts alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wasinn_operator.api.policy import TaskPolicy
from wasinn_operator.api.summary import FailureReason
from wasinn_operator.controller import Facts, OperatorSettings, Plan, Reason, reconcile
from wasinn_operator.controller.pods import start_decision_due
from wasinn_operator.controller.reconcile import FINAL_REASONS

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
UID = "6a0c9f1e-1111-4222-8333-444455556666"
SETTINGS = OperatorSettings(results_cap=64)
OBSERVED = {"observedGeneration": 3, "propellerId": "p-9"}


def task(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {
            "name": "cat",
            "namespace": "ml",
            "uid": UID,
            "generation": 3,
            "labels": {"wasinn.dev/propeller-id": "p-9"},
        },
        "spec": {"wasm": {"path": "/models/m.wasm"}, **(spec or {})},
        "status": status or {},
    }


def pod(attempt: int, phase: str, **status: Any) -> dict[str, Any]:
    node = status.pop("node", None)
    return {
        "metadata": {
            "name": f"cat-{attempt}",
            "labels": {"wasinn.dev/attempt": str(attempt)},
            "creationTimestamp": "2026-11-25T11:59:00Z",
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, **status},
    }


def terminated(exit_code: int, summary: dict[str, Any] | str | None = None) -> dict[str, Any]:
    message = summary if isinstance(summary, str) else json.dumps(summary or {})
    return {
        "containerStatuses": [
            {
                "name": "proplet",
                "state": {"terminated": {"exitCode": exit_code, "message": message}},
            }
        ]
    }


def run(body: dict[str, Any], now: datetime = NOW, **facts: Any) -> Plan:
    return reconcile(body, Facts(now=now, pods=facts.pop("pods", []), **facts), SETTINGS)


def condition(plan: Plan, kind: str) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == kind)


def test_new_task_gets_its_first_pod() -> None:
    plan = run(task())
    assert plan.create_pod is not None
    assert plan.create_pod["metadata"]["name"] == "cat-1"
    assert plan.status["phase"] == "Scheduled"
    assert plan.status["state"] == 1
    assert plan.status["attempts"] == 1
    assert plan.status["podName"] == "cat-1"
    assert plan.status["propellerId"] == "p-9"
    assert plan.status["observedGeneration"] == 3
    assert condition(plan, "Scheduled")["reason"] == "PodCreated"
    assert plan.events == [("Normal", "Scheduled", "Pod cat-1")]


@pytest.mark.parametrize(
    ("facts", "reason", "message"),
    [
        ({"claim_exists": False}, "ModelClaimNotFound", "PersistentVolumeClaim 'models' not found"),
        (
            {"nodes": []},
            "Unschedulable",
            "no node has label wasinn.dev/openvino=true; label a node with "
            "wasinn.dev/openvino=true",
        ),
        ({"wasm_problem": "ConfigMap 'g' has no key 'k'"}, "InvalidWasm", "has no key"),
    ],
)
def test_waits_with_a_reason(facts: dict[str, Any], reason: str, message: str) -> None:
    plan = run(task(), **facts)
    assert plan.create_pod is None
    assert plan.status["phase"] == "Pending"
    assert plan.status["state"] == 0
    scheduled = condition(plan, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", reason)
    assert message in scheduled["message"]
    assert plan.requeue_after == SETTINGS.resync_seconds
    # Once the cause is gone, the same task starts.
    assert run(task(status=plan.status)).create_pod is not None


def test_pod_phases_move_the_task() -> None:
    started = run(task()).status
    unschedulable = pod(
        1,
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available",
            }
        ],
    )
    plan = run(task(status=started), pods=[unschedulable])
    assert plan.status["phase"] == "Pending"
    assert condition(plan, "Scheduled")["message"] == "0/1 nodes are available"
    plan = run(task(status=plan.status), pods=[pod(1, "Pending", node="n1")])
    assert (plan.status["phase"], plan.status["nodeName"]) == ("Scheduled", "n1")
    assert condition(plan, "Scheduled")["status"] == "True"
    plan = run(
        task(status=plan.status),
        pods=[pod(1, "Running", node="n1", startTime="2026-11-25T11:59:30Z")],
    )
    assert (plan.status["phase"], plan.status["state"]) == ("Running", 2)
    assert plan.status["startTime"] == "2026-11-25T11:59:30Z"
    assert plan.create_pod is None


def test_success_records_results() -> None:
    summary = {
        "state": "Completed",
        "exitCode": 0,
        "stdout": "1. tiger cat (282)\n" * 10,
        "stdoutTruncated": False,
        "digest": "sha256:" + "c" * 64,
    }
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task(status=status), pods=[pod(1, "Succeeded", node="n1", **terminated(0, summary))])
    assert (plan.status["phase"], plan.status["state"]) == ("Completed", 3)
    assert plan.status["exitCode"] == 0
    assert plan.status["results"] == ("1. tiger cat (282)\n" * 10)[:64]
    assert plan.status["resultsTruncated"] is True
    assert plan.status["digest"] == "sha256:" + "c" * 64
    assert plan.status["completionTime"] == "2026-11-25T12:00:00.000000Z"
    assert "error" not in plan.status
    assert condition(plan, "Complete")["status"] == "True"
    assert plan.events[-1] == ("Normal", "Completed", "exit code 0")


def test_failure_retries_with_backoff_then_gives_up() -> None:
    spec = {"backoffLimit": 1}
    summary = {"state": "Failed", "exitCode": 1, "error": "exited with code 1"}
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task(spec, status), pods=[pod(1, "Failed", **terminated(1, summary))])
    assert plan.status["phase"] == "Pending"
    assert plan.status["failedAttempts"] == 1
    assert plan.status["retryAfter"] == "2026-11-25T12:00:10.000000Z"
    assert plan.requeue_after == 10
    assert plan.events[0][:2] == ("Warning", "Retrying")
    waiting = run(task(spec, plan.status), pods=[pod(1, "Failed", **terminated(1, summary))])
    assert waiting.create_pod is None
    assert waiting.requeue_after == 10
    later = NOW + timedelta(seconds=11)
    second = run(task(spec, plan.status), later, pods=[pod(1, "Failed", **terminated(1, summary))])
    assert second.create_pod is not None
    assert second.create_pod["metadata"]["name"] == "cat-2"
    assert second.status["attempts"] == 2
    final = run(task(spec, second.status), later, pods=[pod(2, "Failed", **terminated(1, summary))])
    assert (final.status["phase"], final.status["state"]) == ("Failed", 4)
    failed = condition(final, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "2 failed attempt(s), backoffLimit 1: exited with code 1" in failed["message"]


@pytest.mark.parametrize(
    ("pod_status", "reason"),
    [
        ({"reason": "DeadlineExceeded"}, "DeadlineExceeded"),
        (
            terminated(124, {"state": "Failed", "exitCode": 124, "error": "timed out after 5 s"}),
            "DeadlineExceeded",
        ),
        (
            terminated(
                1,
                {
                    "state": "Failed",
                    "exitCode": 1,
                    "error": "fetching the module: digest mismatch: expected a, got b",
                    "reason": "InvalidWasm",
                },
            ),
            "InvalidWasm",
        ),
        *(
            (terminated(1, {"state": "Failed", "exitCode": 1, "error": "x", "reason": r}), r)
            for r in ("InvalidWasm", "PolicyViolation", "DeadlineExceeded")
        ),
    ],
)
def test_failures_that_are_not_retried(pod_status: dict[str, Any], reason: str) -> None:
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(
        task({"backoffLimit": 5, "timeoutSeconds": 5}, status),
        pods=[pod(1, "Failed", **pod_status)],
    )
    assert plan.status["phase"] == "Failed"
    assert condition(plan, "Failed")["reason"] == reason
    assert plan.create_pod is None


RETRIED = sorted(
    set(FailureReason)
    - {
        FailureReason.INVALID_WASM,
        FailureReason.POLICY_VIOLATION,
        FailureReason.DEADLINE_EXCEEDED,
    }
)


@pytest.mark.parametrize("reason", [*RETRIED, None])
def test_failures_that_are_retried(reason: FailureReason | None) -> None:
    # Whatever the message says: the typed reason decides, not the words of the error.
    summary = {
        "state": "Failed",
        "exitCode": 3,
        "error": "digest mismatch; not a WebAssembly binary; cannot read /wasm/module.wasm",
        "reason": reason,
    }
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task({"backoffLimit": 5}, status), pods=[pod(1, "Failed", **terminated(3, summary))])
    assert plan.status["phase"] == "Pending"
    assert plan.status["failedAttempts"] == 1
    assert "Retrying" in [event[1] for event in plan.events]


def test_every_final_reason_is_a_condition_reason() -> None:
    assert {Reason(r) for r in FINAL_REASONS} <= set(Reason)


def test_log_tail_when_the_proplet_wrote_no_summary() -> None:
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task(status=status), pods=[pod(1, "Failed", **terminated(2, "Traceback: boom"))])
    assert plan.status["error"] == "Traceback: boom"
    assert plan.status["exitCode"] == 2


def test_suspend_stops_the_run_and_resume_restarts() -> None:
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1", "results": "partial"}
    plan = run(task({"suspend": True}, status), pods=[pod(1, "Running", node="n1")])
    assert plan.delete_pods == ["cat-1"]
    # As Propeller records a stopped task: Failed (4), its error, no results.
    assert (plan.status["phase"], plan.status["state"]) == ("Failed", 4)
    assert (plan.status["error"], plan.status["results"]) == (
        "task was stopped before completion",
        "",
    )
    assert plan.status["completionTime"] == "2026-11-25T12:00:00.000000Z"
    assert condition(plan, "Failed")["reason"] == "Stopped"
    assert condition(plan, "Suspended")["status"] == "True"
    assert plan.events[-1][:2] == ("Warning", "Failed")
    # The Pod is gone; the task stays Failed while suspended.
    still = run(task({"suspend": True}, plan.status))
    assert still.status == plan.status
    assert still.create_pod is None
    resumed = run(task({"suspend": False}, still.status))
    assert resumed.create_pod is not None
    assert resumed.create_pod["metadata"]["name"] == "cat-2"
    assert resumed.status["phase"] == "Scheduled"
    assert condition(resumed, "Suspended")["status"] == "False"
    assert not any(c["type"] == "Failed" for c in resumed.status["conditions"])
    assert resumed.status.get("failedAttempts", 0) == 0
    assert not {"error", "completionTime", "results"} & set(resumed.status)


def test_a_run_that_failed_by_itself_is_not_resumed() -> None:
    status = {"phase": "Failed", "attempts": 1, "error": "exited with code 1"}
    plan = run(task({"suspend": False}, status))
    assert plan.create_pod is None and plan.status["phase"] == "Failed"


def test_an_earlier_versions_interrupted_run_resumes() -> None:
    status = {"phase": "Interrupted", "attempts": 1, "error": "stopped"}
    assert run(task({"suspend": True}, status)).status["phase"] == "Interrupted"
    resumed = run(task({"suspend": False}, status))
    assert resumed.create_pod is not None and resumed.status["phase"] == "Scheduled"


def test_suspend_while_waiting_for_the_next_attempt() -> None:
    status = {"phase": "Pending", "attempts": 1, "failedAttempts": 1, "retryAfter": "x"}
    plan = run(task({"suspend": True, "backoffLimit": 3}, status), pods=[pod(1, "Failed")])
    assert (plan.status["phase"], plan.status["error"]) == (
        "Failed",
        "task was stopped before completion",
    )
    assert "retryAfter" not in plan.status


def test_suspend_while_the_pod_is_already_going() -> None:
    """Decided again after a lost status write: the Pod it deleted is terminating."""
    going = pod(1, "Running", node="n1")
    going["metadata"]["deletionTimestamp"] = "2026-11-25T11:59:59Z"
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task({"suspend": True}, status), pods=[going])
    assert plan.delete_pods == []
    assert (plan.status["phase"], plan.status["error"]) == (
        "Failed",
        "task was stopped before completion",
    )


def requested(body: dict[str, Any], run_id: int, **notes: str) -> dict[str, Any]:
    """`body` with the shim's run request `run_id` (and its other annotations)."""
    body["metadata"]["annotations"] = {"wasinn.dev/run": str(run_id), **notes}
    return body


def test_a_run_request_starts_a_new_run() -> None:
    done = {
        "phase": "Completed",
        "run": 1,
        "attempts": 1,
        "podName": "cat-1",
        "results": "tiger cat",
        "completionTime": "2026-11-25T11:00:00Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    old = pod(1, "Succeeded", node="n1", **terminated(0, {"stdout": "tiger cat"}))
    # The request the status describes: nothing to do.
    same = run(requested(task({"suspend": False}, done), 1), pods=[old])
    assert same.create_pod is None and same.status == {**done, "state": 3, **OBSERVED}
    plan = run(requested(task({"suspend": False}, done), 2), pods=[old])
    assert plan.create_pod is not None
    assert plan.create_pod["metadata"]["name"] == "cat-2"
    assert (plan.status["phase"], plan.status["run"], plan.status["attempts"]) == (
        "Scheduled",
        2,
        2,
    )
    assert not {"results", "completionTime"} & set(plan.status)
    assert [c["type"] for c in plan.status["conditions"]] == ["Scheduled"]


def test_a_start_error_fails_the_requested_run() -> None:
    body = task({"suspend": True}, {"phase": "Pending", "run": 0})
    plan = run(requested(body, 1, **{"wasinn.dev/start-error": "no file and no image_url"}))
    assert plan.create_pod is None
    assert (plan.status["phase"], plan.status["state"], plan.status["run"]) == ("Failed", 4, 1)
    assert plan.status["error"] == "no file and no image_url"
    assert condition(plan, "Failed")["reason"] == "StartFailed"


def test_a_stop_before_the_operator_took_the_request_up() -> None:
    body = task({"suspend": True}, {"phase": "Completed", "run": 1, "attempts": 1})
    plan = run(requested(body, 2))
    assert plan.create_pod is None
    assert (plan.status["phase"], plan.status["run"]) == ("Failed", 2)
    assert plan.status["error"] == "task was stopped before completion"


def test_a_task_never_started_stays_pending_while_suspended() -> None:
    # The shim's task (it has the run annotation): the status says which request it describes,
    # so the next one is told apart from it.
    plan = run(requested(task({"suspend": True}), 0))
    assert (plan.status["phase"], plan.status["run"]) == ("Pending", 0)
    again = run(requested(task({"suspend": True}, plan.status), 0))
    assert again.status == plan.status
    # A kubectl task has none.
    assert "run" not in run(task({"suspend": True})).status


def test_a_pod_whose_status_write_was_lost_is_adopted() -> None:
    """Pod cat-2 was created, then the status write recording it failed: no third Pod."""
    status = {"phase": "Pending", "attempts": 1, "failedAttempts": 1, "retryAfter": "x"}
    plan = run(task(status=status), pods=[pod(1, "Failed"), pod(2, "Running", node="n1")])
    assert plan.create_pod is None
    assert (plan.status["attempts"], plan.status["podName"]) == (2, "cat-2")
    assert plan.status["phase"] == "Running"
    assert "retryAfter" not in plan.status
    # Its attempt's end is recorded like any other (not skipped as an old failure).
    status = {"phase": "Pending", "attempts": 1, "failedAttempts": 1}
    done = pod(2, "Succeeded", node="n1", **terminated(0, {"stdout": "tiger cat"}))
    plan = run(task(status=status), pods=[pod(1, "Failed"), done])
    assert (plan.status["phase"], plan.status["attempts"]) == ("Completed", 2)
    # Suspended meanwhile: the adopted Pod is the one stopped.
    status = {"phase": "Pending", "attempts": 0}
    plan = run(task({"suspend": True}, status), pods=[pod(1, "Running", node="n1")])
    assert plan.delete_pods == ["cat-1"]
    assert plan.status["phase"] == "Failed"


def test_suspended_before_start() -> None:
    plan = run(task({"suspend": True}))
    assert plan.create_pod is None
    assert plan.status["phase"] == "Pending"
    assert condition(plan, "Suspended")["reason"] == "Suspended"


def test_ttl_after_finished() -> None:
    done = {"phase": "Completed", "completionTime": "2026-11-25T11:59:00Z"}
    assert run(task({"ttlSecondsAfterFinished": 30}, done)).delete_task
    waiting = run(task({"ttlSecondsAfterFinished": 120}, done))
    assert not waiting.delete_task
    assert waiting.requeue_after == 60
    assert not run(task({}, done)).delete_task


def test_a_vanished_pod_is_a_failed_attempt() -> None:
    status = {"phase": "Running", "attempts": 1, "podName": "cat-1"}
    plan = run(task(status=status), pods=[])
    assert plan.status["phase"] == "Failed"
    assert "the Pod disappeared" in plan.status["error"]


def test_reconcile_is_idempotent() -> None:
    first = run(task())
    again = run(task(status=first.status), pods=[pod(1, "Pending")])
    assert again.create_pod is None
    assert again.status == first.status
    assert again.events == []


def test_invalid_spec_fails_clearly() -> None:
    body = task()
    body["spec"]["wasm"] = {"url": "http://a", "path": "/b"}
    plan = run(body)
    assert plan.status["phase"] == "Failed"
    assert "exactly one of url, path, inline, image, configMapKeyRef" in plan.status["error"]


def test_a_suspended_task_may_wait_for_its_module() -> None:
    body = task({"suspend": True})
    del body["spec"]["wasm"]
    plan = run(body)
    assert plan.status["phase"] == "Pending"
    assert plan.create_pod is None
    assert condition(plan, "Suspended")["status"] == "True"
    body["spec"]["suspend"] = False
    assert run(body).status["error"] == (
        "invalid spec: spec.wasm is required unless the task is suspended"
    )


def test_operator_defaults_fill_unset_fields_only() -> None:
    settings = OperatorSettings(
        proplet_resources={"limits": {"memory": "2Gi"}},
        proplet_timeout_seconds=600,
        proplet_engine="wasmtime-cli",
    )
    plan = reconcile(task(), Facts(now=NOW, pods=[]), settings)
    assert plan.create_pod is not None
    pod_spec = plan.create_pod["spec"]
    container = pod_spec["containers"][0]
    sent = json.loads(next(e["value"] for e in container["env"] if e["name"] == "WASINN_TASK"))
    assert container["resources"] == {"limits": {"memory": "2Gi"}}
    assert pod_spec["activeDeadlineSeconds"] == 600
    assert (sent["timeoutSeconds"], sent["engine"]) == (600, "wasmtime-cli")
    own = task({"resources": {"limits": {"cpu": "1"}}, "timeoutSeconds": 5, "engine": "embedded"})
    plan = reconcile(own, Facts(now=NOW, pods=[]), settings)
    assert plan.create_pod is not None
    container = plan.create_pod["spec"]["containers"][0]
    sent = json.loads(next(e["value"] for e in container["env"] if e["name"] == "WASINN_TASK"))
    assert container["resources"] == {"limits": {"cpu": "1"}}
    assert (sent["timeoutSeconds"], sent["engine"]) == (5, "embedded")


def test_operator_default_settings_from_env() -> None:
    settings = OperatorSettings.from_env(
        {
            "WASINN_PROPLET_RESOURCES": '{"requests": {"cpu": "500m"}}',
            "WASINN_PROPLET_TIMEOUT_SECONDS": "120",
            "WASINN_PROPLET_ENGINE": "wasmtime-cli",
        }
    )
    assert settings.proplet_resources == {"requests": {"cpu": "500m"}}
    assert (settings.proplet_timeout_seconds, settings.proplet_engine) == (120, "wasmtime-cli")
    with pytest.raises(ValueError, match="is not embedded or wasmtime-cli"):
        OperatorSettings.from_env({"WASINN_PROPLET_ENGINE": "wamr"})


def test_a_start_decision_is_due_only_when_no_attempt_is_under_way() -> None:
    running = {"phase": "Running", "attempts": 2}
    assert not start_decision_due(task(status=running), [pod(2, "Running")])
    assert not start_decision_due(task(status=running), [pod(2, "Pending")])
    # Ended, and this reconcile records how: a retry (if any) starts in a later one.
    assert not start_decision_due(task(status=running), [pod(2, "Failed")])
    assert not start_decision_due(task(status=running), [pod(2, "Succeeded")])
    assert start_decision_due(task(status=running), [pod(1, "Running")])
    assert start_decision_due(task(status=running), [])
    # Its failure recorded: the retry is due now or waits for its backoff.
    assert start_decision_due(task(status={"phase": "Pending", "attempts": 2}), [pod(2, "Failed")])


ENDINGS = {
    "Pending": {},
    "Running": {},
    "Succeeded": terminated(0, {"state": "Completed", "exitCode": 0, "stdout": "ok"}),
    "Failed": terminated(1, {"state": "Failed", "exitCode": 1, "error": "trap"}),
}


@pytest.mark.parametrize("phase", [None, "Pending", "Scheduled", "Running", "Failed"])
@pytest.mark.parametrize("pod_phase", [None, *ENDINGS])
@pytest.mark.parametrize("pod_attempt", [1, 2, 3])
@pytest.mark.parametrize("suspend", [False, True])
def test_a_reconcile_with_no_start_decision_due_reads_none_of_its_facts(
    phase: str | None, pod_phase: str | None, pod_attempt: int, suspend: bool
) -> None:
    """The handler skips the claim, Node and ConfigMap reads when no start decision is due:
    for every task phase and Pod state, the plan is then the same whatever those facts say."""
    status = {"phase": phase, "attempts": 2, "podName": "cat-2"} if phase else {}
    body = task({"suspend": suspend}, status)
    pods = [] if pod_phase is None else [pod(pod_attempt, pod_phase, **ENDINGS[pod_phase])]
    if start_decision_due(body, pods):
        return
    unknown = run(body, pods=pods)
    refused = run(body, pods=pods, claim_exists=False, nodes=[], wasm_problem="no key 'k'")
    assert refused == unknown


def test_a_task_the_policy_refuses_fails_without_a_pod() -> None:
    body = task({"cliArgs": ["--dir", "/::/host"], "models": {"readOnly": False}})
    plan = run(body)
    assert plan.create_pod is None and plan.create_configmap is None
    assert plan.status["phase"] == "Failed"
    assert plan.status["state"] == 4
    message = "spec.cliArgs: --dir /::/host: host directories are not allowed (allowed: none)"
    assert plan.status["error"] == message
    failed = condition(plan, "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == (
        "True",
        "PolicyViolation",
        message,
    )
    assert ("Warning", "Failed", message) in plan.events
    again = run(task(body["spec"], status=plan.status))  # finished: it stays so, still no Pod
    assert again.create_pod is None and again.status == plan.status
    body["spec"]["cliArgs"] = []
    plan = run(body)
    assert plan.status["error"] == (
        "spec.models.readOnly: false: the models volume is mounted read-only"
    )


def test_the_policy_is_checked_when_the_task_would_start() -> None:
    # Suspended (the shim's create): no verdict yet; resumed, it fails before any Pod.
    body = task({"suspend": True, "env": {"LD_PRELOAD": "/x.so"}})
    plan = run(body)
    assert plan.status["phase"] == "Pending"
    body["spec"]["suspend"] = False
    plan = run(task(body["spec"], status=plan.status))
    assert plan.create_pod is None
    assert condition(plan, "Failed")["reason"] == "PolicyViolation"
    assert plan.status["error"].startswith("spec.env: LD_PRELOAD: reserved name (names starting")


def test_an_operator_policy_widens_what_tasks_may_ask_and_reaches_the_pod() -> None:
    policy = TaskPolicy(allow_host_dirs=("/data",), max_timeout=7200)
    settings = OperatorSettings(policy=policy)
    spec = {"cliArgs": ["--dir", "/data/in::/in"], "timeoutSeconds": 7000}
    plan = reconcile(task(spec), Facts(now=NOW, pods=[]), settings)
    assert plan.create_pod is not None
    env = {e["name"]: e["value"] for e in plan.create_pod["spec"]["containers"][0]["env"]}
    assert TaskPolicy.from_json(env["WASINN_POLICY"]) == policy
    strict = run(task(spec))
    assert strict.create_pod is None
    assert strict.status["error"] == (
        "spec.timeoutSeconds: 7000: above the service maximum of 3600 s"
    )


def test_operator_policy_settings_from_env() -> None:
    settings = OperatorSettings.from_env(
        {"WASINN_ALLOW_HOST_DIRS": "/data", "WASINN_MAX_TIMEOUT": "10m"}
    )
    assert settings.policy == TaskPolicy(allow_host_dirs=("/data",), max_timeout=600)
    with pytest.raises(ValueError, match=r"proplet default timeout \(1200 s\) is above"):
        OperatorSettings.from_env(
            {"WASINN_MAX_TIMEOUT": "10m", "WASINN_PROPLET_TIMEOUT_SECONDS": "1200"}
        )
