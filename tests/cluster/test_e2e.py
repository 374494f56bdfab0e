"""End to end, as users do it: the README's "Install on Kubernetes", walked command by command.

Against any kubeconfig (the local cluster of `hack/cluster` by default; kind through
hack/e2e-kind.sh): build and load the images, label the node, stage the models onto a claim,
`helm install` with the chart's defaults, `kubectl apply -f examples/task.yaml` and wait for
Complete, the seed guide's REST walkthrough and an upload through the shim Service, a plain
MQTT subscriber on the results topic, deletion, late claims and labels, invalid tasks, an
operator restart mid-task, `helm uninstall`; and every README command of the section is run.

What differs from the README is this cluster's, and only that: a fresh namespace instead of
`wasinn`, free local ports for the port-forwards, locally built images with
`imagePullPolicy: Never` (and a busybox image built here), and, when the cluster has no
default StorageClass, a hostPath PersistentVolume made for the README's claim.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .chart_fixtures import (
    EXTRA_SET,
    MOSQUITTO_IMAGE,
    OPERATOR_IMAGE,
    PROPLET_IMAGE,
    Helm,
    available,
    build_and_load,
    describe,
    helm,
    helm_binary,
    leftovers,
    task_pods,
)
from .conftest import NODE_LABEL_KEY, Kubectl, find_kubectl, wait_until
from .conftest import models_claim as models_claim_on
from .operator_fixtures import INVALID_TASKS
from .readme_walk import Readme, free_port

pytestmark = pytest.mark.cluster
__all__ = ["helm"]  # a fixture, used by name

RELEASE = "wasinn"  # the README's release name: object names follow from it
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
GUEST = {"configMapKeyRef": {"name": "wasinn-guests", "key": "classify-c.wasm"}}
KIND = os.environ.get("WASINN_E2E_IMAGES_LOADED") == "1"  # hack/e2e-kind.sh loaded the images


@dataclass
class E2E:
    namespace: str
    readme: Readme
    kubectl: Kubectl
    node: str
    shim_port: int
    mqtt_port: int
    volumes: list[str] = field(default_factory=list)

    def task(self, name: str) -> dict[str, Any]:
        return self.kubectl.get("wnt", name, self.namespace) or {}

    def wait_phase(self, name: str, *phases: str, timeout: float = 300) -> dict[str, Any]:
        try:
            return dict(
                wait_until(
                    f"task {name} to reach {phases}",
                    lambda: (
                        (st := self.task(name).get("status") or {}).get("phase") in phases and st
                    ),
                    timeout=timeout,
                    interval=2,
                )
            )
        except pytest.fail.Exception as exc:
            status = json.dumps(self.task(name).get("status"), indent=1)
            raise AssertionError(
                f"{str(exc)[:300]}\nstatus: {status}\n"
                f"{describe(self.kubectl, self.namespace, SELECTOR)}"
            ) from None

    def wait_reason(self, name: str, reason: str) -> None:
        """Wait for the task's Scheduled condition to give `reason`."""
        wait_until(
            f"{name}: Scheduled {reason}",
            lambda: any(
                c["type"] == "Scheduled" and c.get("reason") == reason
                for c in (self.task(name).get("status") or {}).get("conditions", [])
            ),
            timeout=90,
        )

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "wasinn.dev/v1alpha1", "kind": "WasiNNTask"}
        body["metadata"] = {"name": name, "namespace": self.namespace}
        self.kubectl.apply({**body, "spec": spec})


def default_storage_class(kubectl: Kubectl) -> bool:
    classes = json.loads(kubectl("get", "storageclasses", "-o", "json"))["items"]
    key = "storageclass.kubernetes.io/is-default-class"
    return any(c["metadata"].get("annotations", {}).get(key) == "true" for c in classes)


def claim_volume(kubectl: Kubectl, namespace: str, directory: Path) -> str:
    """A hostPath volume for the README's `models` claim (what a provisioner would make)."""
    name = f"wasinn-e2e-{namespace}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"wasinn.dev/test": "e2e"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": "models"},
                "hostPath": {"path": str(directory), "type": "Directory"},
            },
        }
    )
    return name


def remove_stale_releases(helm: Helm, kubectl: Kubectl) -> None:
    """An interrupted run leaves release `wasinn` (and its cluster-wide RBAC) behind."""
    for rel in json.loads(helm("list", "-A", "-o", "json").stdout or "[]"):
        if rel["name"] == RELEASE and rel["namespace"].startswith("e2e-"):
            helm("uninstall", RELEASE, "-n", rel["namespace"], check=False, timeout=120)
            kubectl.delete("namespace", rel["namespace"], timeout=180)


@pytest.fixture(scope="module")
def e2e(
    request: pytest.FixtureRequest,
    helm: Helm,
    kubectl: Kubectl,
    node_name: str,
    guest_path: Any,
    models_dir: Path,
) -> Iterator[E2E]:
    """Steps 1-3 of the README: label, stage the models, install; torn down afterwards."""
    build_and_load(OPERATOR_IMAGE, PROPLET_IMAGE, MOSQUITTO_IMAGE)
    remove_stale_releases(helm, kubectl)
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    shim_port, mqtt_port = free_port(), free_port()
    scratch = Path(tempfile.mkdtemp(prefix="wasinn-e2e-"))
    volume_dir = scratch / "models"
    volume_dir.mkdir(mode=0o777)
    volume_dir.chmod(0o777)  # the busybox loader runs as nobody
    subs = [
        ("-n wasinn ", f"-n {namespace} "),
        ("--namespace wasinn", f"--namespace {namespace}"),
        ("create namespace wasinn", f"create namespace {namespace}"),
        ("node NODE ", f"node {node_name} "),
        ("localhost:8080", f"localhost:{shim_port}"),
        ("8080:8080", f"{shim_port}:8080"),
        ("1883:1883", f"{mqtt_port}:1883"),
        ("mosquitto_sub -h localhost", f"mosquitto_sub -h localhost -p {mqtt_port}"),
        ("../shared/models/", f"{models_dir.resolve()}/"),
        ("build/guests/classify-c.wasm", str(guest_path("classify-c"))),
        ("/tmp/classify.b64", str(scratch / "classify.b64")),
        (
            "--create-namespace",
            " ".join(["--create-namespace --set image.pullPolicy=Never", *EXTRA_SET]),
        ),
        (
            "--reuse-values",
            "--reuse-values --set mosquitto.image.repository="
            + MOSQUITTO_IMAGE.rsplit(":", 1)[0]
            + " --set mosquitto.image.tag="
            + MOSQUITTO_IMAGE.rsplit(":", 1)[1],
        ),
    ]
    if not KIND:  # no registry here: the busybox image is built locally
        busybox = request.getfixturevalue("smoke_image")
        subs += [
            ('"image":"busybox"', f'"image":"{busybox}","imagePullPolicy":"Never"'),
            ("--image=busybox", f"--image={busybox}"),
        ]
    tools = [str(helm_binary().parent), str(Path(find_kubectl()).parent)]
    env = {"KUBECONFIG": kubectl.kubeconfig, "PATH": ":".join([*tools, os.environ["PATH"]])}
    run = E2E(namespace, Readme(env, subs), kubectl, node_name, shim_port, mqtt_port)
    try:
        run.readme.script("kubectl label node NODE", "kubectl create namespace wasinn")
        if not default_storage_class(kubectl):
            run.volumes.append(claim_volume(kubectl, namespace, volume_dir))
        run.readme.script(
            "kubectl -n wasinn apply -f examples/models-claim.yaml",
            "kubectl -n wasinn run models-loader",
            "kubectl -n wasinn wait --for=condition=Ready pod/models-loader",
            "kubectl -n wasinn cp",
            "kubectl -n wasinn delete pod models-loader",
        )
        run.readme.script(
            "helm install wasinn",
            "kubectl -n wasinn rollout status deployment/wasinn-operator",
            "kubectl -n wasinn rollout status deployment/wasinn-shim",
            timeout=400,
        )
        yield run
    finally:
        run.readme.stop_background()
        kubectl("label", "node", node_name, f"{NODE_LABEL_KEY}=true", "--overwrite")
        helm("uninstall", RELEASE, "-n", namespace, check=False, timeout=120)
        kubectl.delete("namespace", namespace, timeout=240)
        for volume in run.volumes:
            kubectl.delete("pv", volume, timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)


def test_install_gives_a_running_operator_and_shim(e2e: E2E) -> None:
    for component in ("operator", "shim"):
        assert available(e2e.kubectl, f"{RELEASE}-{component}", e2e.namespace)
    claim = e2e.kubectl.get("pvc", "models", e2e.namespace)
    assert claim is not None and claim["status"]["phase"] == "Bound"


def test_kubectl_apply_runs_the_example_task(e2e: E2E) -> None:
    e2e.kubectl.run(
        "delete", "configmap", "wasinn-guests", "-n", e2e.namespace, "--ignore-not-found"
    )
    e2e.readme.script(
        "kubectl -n wasinn create configmap wasinn-guests",
        "kubectl -n wasinn apply -f examples/task.yaml",
        "kubectl -n wasinn wait --for=condition=Complete",
        timeout=360,
    )
    table = e2e.readme.script("kubectl -n wasinn get wnt").splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODE", "EXIT", "AGE"], table
    row = next(line.split() for line in table if line.startswith("classify-chelsea "))
    assert row[1:4] == ["Completed", e2e.node, "0"], table
    results = e2e.readme.script("kubectl -n wasinn get wnt classify-chelsea -o jsonpath")
    assert "1. tiger cat (282)" in results, results
    assert "tiger cat" in e2e.readme.script("kubectl -n wasinn logs pod/")

    status = e2e.task("classify-chelsea")["status"]
    pod = e2e.kubectl.get("pod", status["podName"], e2e.namespace)
    assert pod is not None
    node = e2e.kubectl.get("node", pod["spec"]["nodeName"])
    assert node is not None and node["metadata"]["labels"][NODE_LABEL_KEY] == "true"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, security
    (container,) = pod["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}

    e2e.readme.script("kubectl -n wasinn delete wnt classify-chelsea")
    wait_until(
        "the task's Pod to go",
        lambda: not task_pods(e2e.kubectl, e2e.namespace, "classify-chelsea"),
        timeout=120,
    )


TOKEN_AND_API = ("TOKEN=$(kubectl", "api() {")


def walkthrough(e2e: E2E, *steps: str) -> dict[str, Any]:
    """Run README REST steps that end with a task id in $ID; poll it until it ends."""
    out = e2e.readme.script(*TOKEN_AND_API, *steps, extra='echo "ID=$ID"\n')
    task_id = out.rsplit("ID=", 1)[1].strip()
    final = e2e.readme.poll(
        *TOKEN_AND_API,
        'api "localhost:8080/tasks/$ID?wait=60" | jq',
        env={"ID": task_id},
        until=lambda o: json.loads(o)["state"] in (3, 4),
    )
    return {"id": task_id, **json.loads(final)}


def test_seed_walkthrough_and_upload_through_the_shim_service(e2e: E2E) -> None:
    e2e.readme.start("kubectl -n wasinn port-forward service/wasinn-shim", e2e.shim_port)
    seed = walkthrough(
        e2e,
        'ID=$(api -X POST localhost:8080/tasks -d \'{"name": "classify"}',
        "base64 -w0",
        "jq -n --rawfile",
        "api -X POST localhost:8080/tasks/$ID/start",
    )
    assert seed["state"] == 3, seed
    assert "tiger cat" in seed["results"], seed
    uploaded = walkthrough(
        e2e,
        'ID=$(api -X POST localhost:8080/tasks -d \'{"name": "uploaded"',
        'curl -sS -H "Authorization: Bearer $TOKEN" -X PUT -F file=@',
        "api -X POST localhost:8080/tasks/$ID/start",
    )
    assert uploaded["state"] == 3, uploaded
    assert "tiger cat" in uploaded["results"], uploaded
    # Each Propeller task is a WasiNNTask of the namespace.
    names = e2e.kubectl("get", "wnt", "-n", e2e.namespace, "-o", "name")
    assert f"/{seed['id']}" in names and f"/{uploaded['id']}" in names, names


def test_a_plain_mqtt_subscriber_receives_the_result(e2e: E2E) -> None:
    e2e.readme.stop_background()  # the shim's port-forward follows the Pod the upgrade replaces
    e2e.readme.script(
        "helm upgrade wasinn",
        "kubectl -n wasinn rollout status deployment/wasinn-mosquitto",
        "kubectl -n wasinn rollout status deployment/wasinn-shim",
        timeout=400,
    )
    forward = e2e.readme.start(
        "kubectl -n wasinn port-forward service/wasinn-mosquitto", e2e.mqtt_port
    )
    subscriber = e2e.readme.start("mosquitto_sub -h localhost")
    assert forward.stdout is not None
    wait_until(
        "the subscriber's connection",
        lambda: "Handling connection" in forward.stdout.readline(),
        timeout=30,
    )
    time.sleep(1)  # its SUBSCRIBE follows the CONNECT
    e2e.readme.start("kubectl -n wasinn port-forward service/wasinn-shim", e2e.shim_port)
    done = walkthrough(
        e2e,
        'ID=$(api -X POST localhost:8080/tasks -d \'{"name": "classify"}',
        "base64 -w0",
        "jq -n --rawfile",
        "api -X POST localhost:8080/tasks/$ID/start",
    )
    assert done["state"] == 3, done
    # Results the broker never acknowledged (the earlier tests' tasks, finished before MQTT was
    # enabled) are published when the shim connects, possibly after the subscriber's SUBSCRIBE.
    message = next_message_for(subscriber, done["id"], timeout=60)
    assert "tiger cat" in json.dumps(message["results"]), message


def next_message_for(subscriber: subprocess.Popen[str], task_id: str, timeout: float) -> Any:
    """The first result on the subscriber's output for `task_id` (others are skipped)."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert subscriber.stdout is not None
    stream = subscriber.stdout

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.strip().startswith("{"):
                message = json.loads(line)
                if message.get("task_id") == task_id:
                    return message
                seen.append(str(message.get("task_id")))
    finally:
        subscriber.kill()
    raise AssertionError(f"no result for {task_id} in {timeout} s (got results for {seen})")


def test_a_late_claim_and_a_late_label_let_tasks_run(e2e: E2E, models_dir: Path) -> None:
    e2e.create("late-claim", {"wasm": GUEST, "args": CHELSEA, "models": {"claimName": "late"}})
    e2e.wait_reason("late-claim", "ModelClaimNotFound")
    e2e.volumes.append(models_claim_on(e2e.kubectl, e2e.namespace, models_dir, "late", "e2e"))
    assert "tiger cat" in e2e.wait_phase("late-claim", "Completed", "Failed")["results"]

    e2e.kubectl("label", "node", e2e.node, f"{NODE_LABEL_KEY}-")
    try:
        e2e.create("late-label", {"wasm": GUEST, "args": CHELSEA})
        e2e.wait_reason("late-label", "Unschedulable")
        assert not task_pods(e2e.kubectl, e2e.namespace, "late-label")
    finally:
        e2e.readme.script("kubectl label node NODE")
    assert "tiger cat" in e2e.wait_phase("late-label", "Completed", "Failed")["results"]


@pytest.mark.parametrize(("spec", "message"), INVALID_TASKS)
def test_the_api_server_rejects_invalid_tasks(e2e: E2E, spec: dict[str, Any], message: str) -> None:
    body = {"apiVersion": "wasinn.dev/v1alpha1", "kind": "WasiNNTask"}
    body["metadata"] = {"name": "invalid", "namespace": e2e.namespace}
    proc = e2e.kubectl.run(
        "create", "-f", "-", input=json.dumps({**body, "spec": spec}), check=False
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert e2e.kubectl.get("wnt", "invalid", e2e.namespace) is None


def test_an_operator_restart_mid_task_makes_no_second_pod(e2e: E2E) -> None:
    """The operator is taken away while the task runs (scaled to zero, not a rolling restart,
    which overlapped a short task on a fast machine) and comes back to adopt what its Pod did."""
    deployment = f"deployment/{RELEASE}-operator"
    operator_pods = f"{SELECTOR},app.kubernetes.io/component=operator"
    e2e.create("resilient", {"wasm": GUEST, "args": ["--repeat", "1500", *CHELSEA]})
    e2e.wait_phase("resilient", "Running")
    e2e.kubectl("scale", deployment, "--replicas=0", "-n", e2e.namespace)
    wait_until(
        "the operator Pod to be gone",
        lambda: (
            not json.loads(
                e2e.kubectl("get", "pods", "-l", operator_pods, "-n", e2e.namespace, "-o", "json")
            )["items"]
        ),
        timeout=120,
        interval=2,
    )
    # Only the operator writes a task's status: with it gone the task must still say Running.
    assert e2e.task("resilient")["status"]["phase"] == "Running"
    e2e.kubectl("scale", deployment, "--replicas=1", "-n", e2e.namespace)
    e2e.kubectl("rollout", "status", deployment, "-n", e2e.namespace, "--timeout=180s", timeout=200)
    status = e2e.wait_phase("resilient", "Completed", "Failed", timeout=400)
    assert status["phase"] == "Completed", status
    assert "tiger cat" in status["results"]
    assert status["attempts"] == 1
    assert len(task_pods(e2e.kubectl, e2e.namespace, "resilient")) == 1


def test_helm_uninstall_leaves_no_operator_objects(e2e: E2E) -> None:
    e2e.readme.stop_background()
    e2e.readme.script("helm uninstall wasinn")
    wait_until(
        "every object of the release to be gone",
        lambda: not leftovers(e2e.kubectl, e2e.namespace, SELECTOR),
        timeout=180,
        interval=2,
    )
    assert e2e.kubectl.get("crd", "wasinntasks.wasinn.dev") is not None  # Helm keeps CRDs


def test_every_readme_command_was_run(e2e: E2E) -> None:
    assert e2e.readme.not_walked() == []
