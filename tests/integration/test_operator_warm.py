"""Warm execution against the real API server: the operator assigns warm tasks to worker Pods
(objects the test plays kubelet for) and `wasinn proplet warm` processes on this host, watching
tasks like a worker Pod does, run them with the real engine and models; the operator turns their
reports into status. Hand-off and golden result, a failing guest retried per backoffLimit, and
a worker Pod that dies holding an attempt, retried on another worker."""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasinn_operator.api.warm import POOL_LABEL
from wasinn_operator.controller.builders import PART_OF

from ..conftest import free_port, loop_model
from .conftest import OperatorProcess, _stop_process, _wait_healthy
from .kubeapi import Cluster
from .test_operator_apiserver import LABELS, condition, running_operator, status, wait_status

pytestmark = pytest.mark.integration
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
TRAP = '(module (memory (export "memory") 1) (func (export "_start") unreachable))'
WARM_ENV = {"WASINN_WARM_ENABLED": "true"}


@pytest.fixture
def operator(kube: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, tmp_path, WASINN_WARM_NAMESPACE=kube.namespace, **WARM_ENV) as p:
        yield p


def worker_pod(kube: Cluster, name: str, node: str = "n1") -> dict[str, Any]:
    """A worker Pod of pool default, Running and Ready on `node` (the test is its kubelet)."""
    kube.create(
        "pods",
        {
            "metadata": {
                "name": name,
                "labels": {POOL_LABEL: "default", PART_OF[0]: PART_OF[1]},
            },
            "spec": {"containers": [{"name": "worker", "image": "localhost/wasinn-proplet:dev"}]},
        },
    )
    return dict(kube.set_pod_phase(name, "Running", node=node))


@contextlib.contextmanager
def worker_process(
    kube: Cluster, pod: dict[str, Any], tmp_path: Path, models: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`wasinn proplet warm` on this host as the worker of `pod`."""
    port = free_port()
    log = tmp_path / f"worker-{pod['metadata']['name']}.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "WASINN_WORKER_POD": pod["metadata"]["name"],
        "WASINN_WORKER_UID": pod["metadata"]["uid"],
        "WASINN_NAMESPACES": kube.namespace,
        "WASINN_WORKER_HEALTH_PORT": str(port),
        "WASINN_MODELS_DIR": str(models),
        "WASINN_CACHE_DIR": str(tmp_path / "cache"),
    }
    with log.open("ab") as out:
        command = [sys.executable, "-m", "wasinn_operator.cli", "proplet", "warm"]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log, "the worker", 120)
        yield process
    finally:
        _stop_process(process, 15)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def warm_task(kube: Cluster, name: str, wasm: bytes, **spec: Any) -> None:
    inline = base64.b64encode(wasm).decode()
    kube.create(
        "wasinntasks",
        {
            "metadata": {"name": name},
            "spec": {"wasm": {"inline": inline}, "execution": "warm", **spec},
        },
    )


def task_pods(kube: Cluster, name: str) -> list[Any]:
    uid = kube.get("wasinntasks", name)["metadata"]["uid"]
    return list(kube.list("pods", label_selector=f"wasinn.dev/task-uid={uid}"))


def test_warm_tasks_run_on_the_worker_with_pod_identical_status(
    kube: Cluster,
    operator: OperatorProcess,
    tmp_path: Path,
    models_dir: Path,
    guest_path: Any,
) -> None:
    kube.add_node("n1", LABELS)
    pod = worker_pod(kube, "warm-1")
    guest = Path(guest_path("classify-c")).read_bytes()
    with worker_process(kube, pod, tmp_path, models_dir):
        warm_task(kube, "cat", guest, cliArgs=["-S", "nn"], args=CHELSEA, timeoutSeconds=60)
        st = wait_status(
            kube, "cat", "Completed", lambda s: s.get("phase") in ("Completed", "Failed")
        )
        assert st["phase"] == "Completed", st
        assert (st["state"], st["exitCode"], st["attempts"]) == (3, 0, 1)
        assert "1. tiger cat (282)" in st["results"]
        assert st["digest"].startswith("sha256:")
        assert st["worker"]["pod"] == "warm-1" and st["worker"]["timeoutSeconds"] == 60
        assert (st["podName"], st["nodeName"]) == ("warm-1", "n1")
        assert condition(st, "Complete")["status"] == "True"
        assert st["startTime"] <= st["completionTime"]
        assert task_pods(kube, "cat") == []  # no Pod of its own

        # A guest that traps: a failed attempt, retried per backoffLimit, then Failed.
        warm_task(kube, "trap", wasmtime.wat2wasm(TRAP), backoffLimit=1)
        st = wait_status(kube, "trap", "Failed", lambda s: s.get("phase") == "Failed")
        assert st["attempts"] == 2 and st["failedAttempts"] == 2
        assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded"
        assert "trap" in st["error"].lower() or "unreachable" in st["error"]


def test_a_worker_pod_that_dies_holding_an_attempt_is_retried_on_another(
    kube: Cluster,
    operator: OperatorProcess,
    tmp_path: Path,
    models_dir: Path,
    guest_path: Any,
) -> None:
    kube.add_node("n1", LABELS)
    # A worker Pod whose process never comes: it holds the attempt until the Pod is gone.
    worker_pod(kube, "warm-dead")
    guest = Path(guest_path("classify-c")).read_bytes()
    warm_task(kube, "cat", guest, cliArgs=["-S", "nn"], args=CHELSEA, backoffLimit=1)
    st = wait_status(kube, "cat", "assigned", lambda s: s.get("phase") == "Scheduled")
    assert st["worker"]["pod"] == "warm-dead"
    live = worker_pod(kube, "warm-live")
    with worker_process(kube, live, tmp_path, models_dir):
        kube.delete("pods", "warm-dead", grace_period_seconds=0)
        st = wait_status(
            kube, "cat", "Completed", lambda s: s.get("phase") in ("Completed", "Failed")
        )
    assert st["phase"] == "Completed", st
    assert st["attempts"] == 2 and st["failedAttempts"] == 1
    assert st["worker"]["pod"] == "warm-live"
    assert "1. tiger cat (282)" in st["results"]
    assert status(kube, "cat")["phase"] == "Completed"


def test_warm_tasks_wait_for_a_ready_worker(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, models_dir: Path
) -> None:
    kube.add_node("n1", LABELS)
    warm_task(kube, "spin", wasmtime.wat2wasm('(module (func (export "_start")))'))
    st = wait_status(
        kube, "spin", "waiting", lambda s: condition(s, "Scheduled").get("reason") == "NoWarmWorker"
    )
    assert st["phase"] == "Pending"
    pod = worker_pod(kube, "warm-late")
    with worker_process(kube, pod, tmp_path, models_dir):
        st = wait_status(kube, "spin", "Completed", lambda s: s.get("phase") == "Completed")
    assert st["worker"]["pod"] == "warm-late"


def test_a_worker_leaves_when_an_inference_outlives_its_attempt(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, guest_path: Any
) -> None:
    """An attempt whose inference OpenVINO would not stop fails at its deadline; its worker
    turns not ready and exits by itself, taking the inference along (its container would
    restart)."""
    kube.add_node("n1", LABELS)
    pod = worker_pod(kube, "warm-loop")
    models = tmp_path / "loop-models"
    loop_model(models / "loop")
    # ~1-2 us an iteration here: far past the attempt's 5 s and the 2 s cancellation grace.
    (models / "loop" / "x.f32").write_bytes(struct.pack("<4f", 3 * 10**7, 0, 0, 0))
    guest = Path(guest_path("classify-c")).read_bytes()
    args = ["--model", "loop", "--dims", "1,4", "--classes", "4", "/models/loop/x.f32"]
    with worker_process(kube, pod, tmp_path, models) as process:
        warm_task(kube, "loop", guest, args=args, timeoutSeconds=5)
        st = wait_status(kube, "loop", "Failed", lambda s: s.get("phase") == "Failed")
        assert condition(st, "Failed")["reason"] == "DeadlineExceeded", st
        assert process.wait(120) == 0  # not ready, nothing assigned for 15 s: it left
    assert (
        "outlived its deadline and still runs here"
        in (tmp_path / "worker-warm-loop.log").read_text()
    )
