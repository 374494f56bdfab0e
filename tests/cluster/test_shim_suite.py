"""The shared shim suite (tests/integration/test_shim_*.py) on the real local cluster.

The same test functions the integration suite runs on the local backend and without nodes run here
with the kubernetes backend against a real API server: a `wasinn shim` process on this host
keeps its tasks as WasiNNTasks in a fresh namespace, the real operator runs them as Pods of the
proplet image on the labelled node, and those Pods fetch their modules from the shim's
/artifacts over the node network. Both the shim and the operator hold only the RBAC the chart
grants them (charts/wasinn-operator/files/*-rules.yaml), so a call missing there fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..integration.conftest import (
    ShimBackend,
    classify_b64,
    make_shim,
    persistent_broker,
    spin_wasm,
    task_cache,
)
from ..integration.test_shim_errors import (
    shim,
    test_bad_inputs,
    test_start_needs_a_module_and_no_double_start,
    test_token,
)
from ..integration.test_shim_mqtt import (
    manager,
    test_bad_start_message_fails_the_task_visibly,
    test_image_url_through_the_registry_protocol,
    test_manager_start_runs_a_task_and_publishes,
    test_manager_stop_ends_a_running_task,
)
from ..integration.test_shim_restart import (
    test_broker_restart_loses_no_result,
    test_shim_restart_loses_no_task_or_result,
)
from ..integration.test_shim_schemathesis import test_schemathesis_finds_nothing
from ..integration.test_shim_wait import (
    test_wait_answers_once_the_run_ended,
    test_wait_gives_up_or_hears_the_stop,
)
from ..integration.test_shim_walkthrough import (
    test_inputs_as_numbers_and_a_failing_run,
    test_pages_are_ordered_and_complete,
    test_put_replaces_env_and_keeps_the_rest,
    test_seed_walkthrough,
    test_upload_rerun_and_delete,
)
from .conftest import Kubectl
from .operator_fixtures import Operator, account_kubeconfig, crd, operator_ns, proplet_image

pytestmark = pytest.mark.cluster
# Collected here by name: the shared tests and the fixtures they use beyond tests/cluster's.
__all__ = [
    "classify_b64",
    "crd",
    "make_shim",
    "manager",
    "operator_ns",
    "persistent_broker",
    "proplet_image",
    "shim",
    "spin_wasm",
    "task_cache",
    "test_bad_inputs",
    "test_bad_start_message_fails_the_task_visibly",
    "test_broker_restart_loses_no_result",
    "test_image_url_through_the_registry_protocol",
    "test_inputs_as_numbers_and_a_failing_run",
    "test_manager_start_runs_a_task_and_publishes",
    "test_manager_stop_ends_a_running_task",
    "test_pages_are_ordered_and_complete",
    "test_put_replaces_env_and_keeps_the_rest",
    "test_schemathesis_finds_nothing",
    "test_seed_walkthrough",
    "test_shim_restart_loses_no_task_or_result",
    "test_start_needs_a_module_and_no_double_start",
    "test_token",
    "test_upload_rerun_and_delete",
    "test_wait_answers_once_the_run_ended",
    "test_wait_gives_up_or_hears_the_stop",
]


@pytest.fixture
def backend(kubectl: Kubectl, operator_ns: tuple[str, Operator], tmp_path: Path) -> ShimBackend:
    """The kubernetes backend in the operator's namespace, as the chart's shim account."""
    namespace, _ = operator_ns
    nodes = json.loads(kubectl("get", "nodes", "-l", "wasinn.dev/openvino=true", "-o", "json"))
    [node] = nodes["items"]
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    kubeconfig = account_kubeconfig(kubectl, namespace, tmp_path, account="shim")

    def args(_workdir: Path, url: str) -> list[str]:
        # Pods reach the shim on the node's address, not on the loopback the tests use.
        port = url.rsplit(":", 1)[1]
        return [
            "--backend", "kubernetes", "--namespace", namespace,
            "--host", "0.0.0.0", "--public-url", f"http://{address}:{port}",
        ]  # fmt: skip

    return ShimBackend(
        "kubernetes", args, {"KUBECONFIG": str(kubeconfig)}, node=node["metadata"]["name"]
    )
