"""A task's next step, as a pure function of the task, its Pods and cluster facts.

`reconcile` returns a `Plan` (status to write, Pod/ConfigMap to create, Pods to delete, the
task to delete, events, when to look again); the handlers gather facts and carry plans out.
Being level-triggered, it gives the same answer however often it runs, so an operator that
restarts mid-task picks up the existing Pod instead of making a second one. Every phase change
is an `api.lifecycle` event:

    run request (wasinn.dev/run) or resume --START--> Pending --Pod created: SCHEDULE-->
    Scheduled --Pod running: RUN--> Running --succeeded: SUCCEED--> Completed
    an attempt failed or cannot be placed --RETRY--> Pending (backoff), or --FAIL--> Failed
    (limit, deadline, bad wasm, policy, a start error); suspension --STOP--> Failed (Stopped)
    no claim, node or module yet: stays Pending with the reason (Unschedulable names what no
    node has)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from ..api import PROPELLER_ID_LABEL, RunSummary, WasiNNTaskSpec
from ..api.errors import describe_errors
from ..api.lifecycle import Event
from ..api.policy import PolicyError, check_spec
from ..api.summary import EXIT_TIMEOUT, FailureReason
from ..api.times import format_time, parse_time
from . import external, warm
from .builders import TaskTooLargeError, build_pod, build_wasm_configmap
from .intents import new_run, stopped_run, suspend, take_run_request
from .nodes import explain_shortfall, requirements
from .phases import ConditionType, Reason, TaskPhase
from .plan import (
    Facts,
    Plan,
    condition,
    fail,
    has_condition,
    move,
    reach_running,
    schedule,
)
from .pods import attempt_of, current_pod, ended, pod_condition, run_summary, unschedulable
from .priority import priority_class, task_priority
from .settings import OperatorSettings

__all__ = ["Facts", "Plan", "reconcile", "stopped_run", "with_defaults"]
# Failures another attempt cannot mend: the task fails at once instead of retrying.
FINAL_REASONS = frozenset({FailureReason.INVALID_WASM, FailureReason.POLICY_VIOLATION})


def reconcile(task: dict[str, Any], facts: Facts, settings: OperatorSettings) -> Plan:
    """Decide the next step for one task."""
    status = dict(task.get("status") or {})
    meta = task["metadata"]
    status["observedGeneration"] = meta.get("generation", 1)
    propeller_id = (meta.get("labels") or {}).get(PROPELLER_ID_LABEL)
    if propeller_id:
        status["propellerId"] = propeller_id
    plan = Plan(status=status)
    before = TaskPhase(status.get("phase") or TaskPhase.PENDING)
    try:
        spec = WasiNNTaskSpec.model_validate(task.get("spec") or {})
    except ValidationError as exc:
        if not before.finished:
            fail(plan, Reason.INVALID_WASM, f"invalid spec: {describe_errors(exc)}", facts.now)
    else:
        _step(task, with_defaults(spec, settings), facts, settings, plan, before)
    after = TaskPhase(plan.status["phase"])
    plan.status["state"] = after.state
    if after != before or "phase" not in (task.get("status") or {}):
        kind = "Warning" if after in (TaskPhase.FAILED, TaskPhase.INTERRUPTED) else "Normal"
        plan.events.append((kind, after.value, _phase_message(plan.status)))
    return plan


def with_defaults(spec: WasiNNTaskSpec, settings: OperatorSettings) -> WasiNNTaskSpec:
    """The spec with the operator's proplet defaults for the fields the task leaves unset."""
    changes: dict[str, Any] = {}
    if "execution" not in spec.model_fields_set:
        changes["execution"] = settings.default_execution
    warm = changes.get("execution", spec.execution) == "warm"
    if not spec.resources and settings.proplet_resources and not warm:
        changes["resources"] = settings.proplet_resources
    if spec.timeout_seconds is None and settings.proplet_timeout_seconds is not None:
        changes["timeout_seconds"] = settings.proplet_timeout_seconds
    if "engine" not in spec.model_fields_set:
        changes["engine"] = settings.proplet_engine
    return spec.model_copy(update=changes) if changes else spec


def _step(
    task: dict[str, Any],
    spec: WasiNNTaskSpec,
    facts: Facts,
    settings: OperatorSettings,
    plan: Plan,
    phase: TaskPhase,
) -> None:
    status = plan.status
    status.setdefault("phase", phase.value)
    if take_run_request(task, facts, plan):
        _expire(spec, facts, plan)
        return  # it could not start
    phase = TaskPhase(status["phase"])
    dispatched = external.current(task)
    if phase.finished and not spec.suspend and stopped_run(status) and dispatched is None:
        new_run(plan)  # resumed after a stop: Job-like, suspend and resume run it again
        condition(plan, ConditionType.SUSPENDED, False, Reason.RESUMED, "resumed", facts.now)
    elif phase.finished:
        _expire(spec, facts, plan)
        return
    if dispatched is not None:  # run by external proplets (the shim's dispatch): no Pod
        external.step(dispatched, task, spec, facts, settings, plan)
        if TaskPhase(status["phase"]).finished:
            _expire(spec, facts, plan)
        return
    attempts = int(status.get("attempts", 0))
    pod = current_pod(facts.pods, attempts)
    if pod is not None and attempt_of(pod) > attempts:
        # Created by a reconcile whose status write never landed (a conflict with the shim, or
        # the operator stopped in between): adopt it rather than start another attempt.
        status.update(attempts=attempt_of(pod), podName=pod["metadata"]["name"])
        status.pop("retryAfter", None)
        schedule(plan)
    elif pod is not None and ended(pod) and status.get("phase") == TaskPhase.PENDING:
        pod = None  # its failure was recorded already; the retry is due or waiting
    if pod is not None and _absorb_pod(pod, spec, facts, settings, plan):
        return  # the attempt ended: Completed, Failed, or a retry scheduled
    if spec.suspend:
        suspend(pod, facts, plan)
        if spec.execution == "warm":
            # A worker is shared: it is never deleted; the attempt's report is ignored instead.
            plan.delete_pods.clear()
        if TaskPhase(status["phase"]).finished:
            _expire(spec, facts, plan)
        return
    if has_condition(status, ConditionType.SUSPENDED, True):
        condition(plan, ConditionType.SUSPENDED, False, Reason.RESUMED, "resumed", facts.now)
    if pod is not None:
        return  # the attempt is under way; Pod events move it along
    if status.get("podName") and status.get("phase") in (TaskPhase.SCHEDULED, TaskPhase.RUNNING):
        _attempt_failed(spec, facts, settings, plan, "the Pod disappeared", None)
        return
    try:  # before every attempt: a task the policy refuses never gets a Pod
        check_spec(settings.policy, spec)
    except PolicyError as exc:
        fail(plan, Reason.POLICY_VIOLATION, str(exc), facts.now)
        return
    refused = warm.refusal(spec, settings) if spec.execution == "warm" else None
    if refused:
        fail(plan, Reason.POLICY_VIOLATION, refused, facts.now)
        return
    if not _ready_to_start(spec, facts, settings, plan):
        return
    _start_attempt(task, spec, facts, settings, plan)


def _ready_to_start(
    spec: WasiNNTaskSpec, facts: Facts, settings: OperatorSettings, plan: Plan
) -> bool:
    status = plan.status
    claim = spec.models.claim_name or settings.models_claim
    problem: tuple[Reason, str] | None = None
    if not facts.claim_exists:
        problem = (Reason.MODEL_CLAIM_NOT_FOUND, f"PersistentVolumeClaim {claim!r} not found")
    elif (shortfall := _shortfall(spec, facts, settings)) is not None:
        problem = (Reason.UNSCHEDULABLE, shortfall)
    elif facts.wasm_problem:
        problem = (Reason.INVALID_WASM, facts.wasm_problem)
    if problem is not None:
        move(plan, Event.RETRY)
        condition(plan, ConditionType.SCHEDULED, False, problem[0], problem[1], facts.now)
        plan.requeue_after = settings.resync_seconds
        return False
    retry_after = status.get("retryAfter")
    if retry_after and parse_time(retry_after) > facts.now:
        plan.requeue_after = (parse_time(retry_after) - facts.now).total_seconds()
        return False
    return True


def _start_attempt(
    task: dict[str, Any],
    spec: WasiNNTaskSpec,
    facts: Facts,
    settings: OperatorSettings,
    plan: Plan,
) -> None:
    attempt = int(plan.status.get("attempts", 0)) + 1
    if spec.execution == "warm":
        _assign_worker(spec, facts, settings, plan, attempt)
        return
    plan.status.pop("worker", None)
    try:
        plan.create_pod = build_pod(
            task,
            spec,
            attempt,
            image=settings.proplet_image,
            pull_policy=settings.pull_policy,
            placement=requirements(spec, settings),
            claim=settings.models_claim,
            service_account=settings.service_account,
            policy=settings.policy,
            model_cache_claim=settings.model_cache_claim,
            model_cache_bytes=settings.model_cache_bytes,
            priority_class=priority_class(task_priority(task), settings.priority_classes),
        )
    except TaskTooLargeError as exc:
        fail(plan, Reason.INVALID_WASM, str(exc), facts.now)
        return
    plan.create_configmap = build_wasm_configmap(task, spec)
    plan.status.update(attempts=attempt, podName=plan.create_pod["metadata"]["name"])
    plan.status.pop("retryAfter", None)
    plan.status.pop("nodeName", None)
    schedule(plan)
    condition(
        plan,
        ConditionType.SCHEDULED,
        False,
        Reason.POD_CREATED,
        f"Pod {plan.status['podName']} created (attempt {attempt})",
        facts.now,
    )


def _assign_worker(
    spec: WasiNNTaskSpec, facts: Facts, settings: OperatorSettings, plan: Plan, attempt: int
) -> None:
    """execution: warm: hand the attempt to the least-loaded ready worker of the task's pool."""
    pool = warm.pool_for(spec, settings) or settings.warm_pools[0][0]
    worker = warm.choose_worker(facts.workers or [], facts.load)
    if worker is None:
        move(plan, Event.RETRY)
        message = f"no warm worker of pool {pool} is ready; the task waits for one"
        condition(plan, ConditionType.SCHEDULED, False, Reason.NO_WARM_WORKER, message, facts.now)
        plan.requeue_after = settings.resync_seconds
        return
    name = worker["metadata"]["name"]
    node = (worker.get("spec") or {}).get("nodeName")
    plan.status.update(attempts=attempt, podName=name, worker=warm.worker_ref(worker, pool, spec))
    plan.status.pop("retryAfter", None)
    if node:
        plan.status["nodeName"] = node
    else:
        plan.status.pop("nodeName", None)
    schedule(plan)
    condition(
        plan,
        ConditionType.SCHEDULED,
        True,
        Reason.WORKER_ASSIGNED,
        f"warm worker {name} of pool {pool} (attempt {attempt})",
        facts.now,
    )


def _absorb_pod(
    pod: dict[str, Any],
    spec: WasiNNTaskSpec,
    facts: Facts,
    settings: OperatorSettings,
    plan: Plan,
) -> bool:
    """Map the current Pod onto the status; True when its attempt has ended."""
    status = plan.status
    pod_status = pod.get("status") or {}
    phase = pod_status.get("phase", "Pending")
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        status["nodeName"] = node
    if phase == "Pending":
        if unschedulable(pod):
            # The scheduler's message counts nodes ("0/3 nodes are available: 1 Insufficient
            # gpu.intel.com/i915, ..."); say by name what no node has, where the nodes tell.
            scheduled = pod_condition(pod, "PodScheduled") or {}
            said = scheduled.get("message") or "the scheduler found no node"
            shortfall = _shortfall(spec, facts, settings)
            move(plan, Event.RETRY)
            condition(
                plan,
                ConditionType.SCHEDULED,
                False,
                Reason.UNSCHEDULABLE,
                f"{shortfall} (scheduler: {said})" if shortfall else said,
                facts.now,
            )
        elif node:
            if status.get("phase") == TaskPhase.PENDING:
                move(plan, Event.SCHEDULE)
            condition(
                plan,
                ConditionType.SCHEDULED,
                True,
                Reason.POD_SCHEDULED,
                f"Pod {pod['metadata']['name']} scheduled on {node}",
                facts.now,
            )
        return False
    if phase == "Running":
        reach_running(plan)
        status.setdefault("startTime", pod_status.get("startTime") or format_time(facts.now))
        condition(
            plan,
            ConditionType.SCHEDULED,
            True,
            Reason.POD_SCHEDULED,
            f"Pod {pod['metadata']['name']} running on {node}",
            facts.now,
        )
        return False
    if phase not in ("Succeeded", "Failed"):
        return False
    status.setdefault("startTime", pod_status.get("startTime") or format_time(facts.now))
    summary, exit_code = run_summary(pod)
    _record_results(status, summary, exit_code, settings)
    if phase == "Succeeded":
        if status.get("phase") == TaskPhase.PENDING:
            move(plan, Event.SCHEDULE)
        move(plan, Event.SUCCEED)
        status["completionTime"] = format_time(facts.now)
        condition(
            plan,
            ConditionType.COMPLETE,
            True,
            Reason.COMPLETED,
            f"exit code {status.get('exitCode', 0)}",
            facts.now,
        )
        _expire(spec, facts, plan)
        return True
    error = status.get("error") or f"the Pod failed ({pod_status.get('reason') or 'no reason'})"
    reason = None if summary is None else summary.reason
    timed_out = reason is FailureReason.DEADLINE_EXCEEDED or exit_code == EXIT_TIMEOUT
    if pod_status.get("reason") == "DeadlineExceeded" or timed_out:
        message = f"timed out after {spec.timeout_seconds} s" if spec.timeout_seconds else error
        fail(plan, Reason.DEADLINE_EXCEEDED, message, facts.now)
    elif reason in FINAL_REASONS:
        fail(plan, Reason(reason), error, facts.now)
    else:
        _attempt_failed(spec, facts, settings, plan, error, exit_code)
    if TaskPhase(status["phase"]).finished:
        _expire(spec, facts, plan)
    return True


def _shortfall(spec: WasiNNTaskSpec, facts: Facts, settings: OperatorSettings) -> str | None:
    """What no node has for this task, with the fix for a missing OpenVINO label."""
    if facts.nodes is None:
        return None
    shortfall = explain_shortfall(facts.nodes, requirements(spec, settings))
    label = "=".join(settings.label)
    if shortfall and f"no node has label {label}" in shortfall:
        shortfall += f"; label a node with {label}"
    return shortfall


def _attempt_failed(
    spec: WasiNNTaskSpec,
    facts: Facts,
    settings: OperatorSettings,
    plan: Plan,
    error: str,
    exit_code: int | None,
) -> None:
    status = plan.status
    failures = int(status.get("failedAttempts", 0)) + 1
    status["failedAttempts"] = failures
    status["error"] = error
    if exit_code is not None:
        status["exitCode"] = exit_code
    if failures > spec.backoff_limit:
        fail(
            plan,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{failures} failed attempt(s), backoffLimit {spec.backoff_limit}: {error}",
            facts.now,
            error=error,
        )
        return
    delay = min(settings.backoff_base_seconds * 2 ** (failures - 1), settings.backoff_max_seconds)
    status["retryAfter"] = format_time(facts.now + timedelta(seconds=delay))
    move(plan, Event.RETRY)
    plan.requeue_after = delay
    plan.events.append(
        (
            "Warning",
            Reason.RETRYING.value,
            f"attempt {status.get('attempts')} failed ({error}); retrying in {delay:g} s",
        )
    )


def _expire(spec: WasiNNTaskSpec, facts: Facts, plan: Plan) -> None:
    ttl = spec.ttl_seconds_after_finished
    finished = plan.status.get("completionTime")
    if ttl is None or not finished:
        return
    remaining = (parse_time(finished) + timedelta(seconds=ttl) - facts.now).total_seconds()
    if remaining <= 0:
        plan.delete_task = True
    else:
        plan.requeue_after = remaining


def _record_results(
    status: dict[str, Any],
    summary: RunSummary | None,
    exit_code: int | None,
    settings: OperatorSettings,
) -> None:
    if exit_code is not None:
        status["exitCode"] = exit_code
    if summary is None:
        return
    results = summary.stdout.encode()
    status["results"] = results[: settings.results_cap].decode("utf-8", errors="ignore")
    status["resultsTruncated"] = summary.stdout_truncated or len(results) > settings.results_cap
    if summary.error:
        status["error"] = summary.error
    else:
        status.pop("error", None)
    if summary.digest:
        status["digest"] = summary.digest


def _phase_message(status: dict[str, Any]) -> str:
    phase = status["phase"]
    if phase == TaskPhase.FAILED:
        return str(status.get("error") or "failed")
    if phase in (TaskPhase.SCHEDULED, TaskPhase.RUNNING):
        return f"Pod {status.get('podName')}" + (
            f" on {status['nodeName']}" if status.get("nodeName") else ""
        )
    if phase == TaskPhase.COMPLETED:
        return f"exit code {status.get('exitCode', 0)}"
    for found in status.get("conditions") or []:
        if found.get("status") == "False" and found.get("type") == "Scheduled":
            return f"{found.get('reason')}: {found.get('message')}"
    return str(phase)
