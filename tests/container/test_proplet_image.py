"""The proplet image runs tasks as a Pod would: read-only root, uid 65532, models at /models.

Modules come by URL (digest-checked, from an HTTP server of this test on 127.0.0.1), by file
(bind-mounted read-only), inline in a task file, and from a real OCI registry on 127.0.0.1;
failures end with a non-zero exit and a clear error in the termination message.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from ..conftest import free_port
from .conftest import UID, Registry, Run, podman, run_container, sha256

pytestmark = pytest.mark.container

TENSOR = "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"
CLASSIFY_ARGS = ["--model", "efficientnet-lite0", TENSOR]
GUESTS = ["classify-c", "classify-rust"]
TOP_LINE = re.compile(r"^\s+(\d+)\. (.+) \((\d+)\) ([0-9.]+)$")
TRAP_WAT = '(module (memory (export "memory") 1) (func (export "_start") unreachable))'
# Kubernetes keeps at most 4096 bytes of a termination message.
MAX_MESSAGE = 4096


def top5(stdout: str) -> list[tuple[str, int, float]]:
    """The ranked lines `  1. tiger cat (282) 0.383438` as (label, class, score)."""
    ranked = []
    for line in stdout.splitlines():
        match = TOP_LINE.match(line)
        if match:
            ranked.append((match[2], int(match[3]), float(match[4])))
    return ranked


def assert_tiger_cat(run: Run, wasm: bytes, engine: str = "embedded") -> None:
    assert run.returncode == 0, run.describe()
    lines = run.stdout.splitlines()
    assert lines[0] == TENSOR, run.describe()
    ranked = top5(run.stdout)
    assert len(ranked) == 5, run.describe()
    assert ranked[0][0] == "tiger cat", run.describe()
    assert len(run.message.encode()) <= MAX_MESSAGE
    summary = run.summary
    assert summary["state"] == "Completed", run.describe()
    assert summary["exitCode"] == 0
    assert summary["error"] is None
    assert summary["digest"] == sha256(wasm)
    assert summary["engine"] == engine
    assert "tiger cat" in summary["stdout"]
    assert summary["stdoutTruncated"] is False


def assert_failed(run: Run, error: str) -> None:
    assert run.returncode != 0, run.describe()
    assert len(run.message.encode()) <= MAX_MESSAGE
    summary = run.summary
    assert summary["state"] == "Failed", run.describe()
    assert summary["exitCode"] != 0, run.describe()
    assert error in str(summary["error"]), run.describe()
    assert error in run.stderr, run.describe()


@pytest.mark.parametrize("guest", GUESTS)
def test_classify_by_url_with_digest(
    guest: str,
    guest_path: Callable[[str], Path],
    proplet: Callable[..., Run],
    wasm_server: Callable[[str, bytes], str],
) -> None:
    wasm = guest_path(guest).read_bytes()
    url = wasm_server(f"{guest}.wasm", wasm)
    task = {"id": f"url-{guest}", "wasm": {"url": url, "digest": sha256(wasm)},
            "cliArgs": ["-S", "nn"], "args": CLASSIFY_ARGS}  # fmt: skip
    assert_tiger_cat(proplet(task, network="host"), wasm)


@pytest.mark.parametrize("guest", GUESTS)
def test_classify_by_file(
    guest: str, guest_path: Callable[[str], Path], proplet: Callable[..., Run]
) -> None:
    path = guest_path(guest)
    task = {"id": f"file-{guest}", "wasm": {"path": "/task/module.wasm"}, "args": CLASSIFY_ARGS}
    run = proplet(task, volumes=[(path, "/task/module.wasm", "ro")])
    assert_tiger_cat(run, path.read_bytes())


def test_classify_inline_from_task_file(
    guest_path: Callable[[str], Path],
    proplet: Callable[..., Run],
    host_file: Callable[[str, bytes], Path],
) -> None:
    # Inline base64 of a 250 KB module is over the 128 KiB limit of one environment string:
    # the task comes as a file (WASINN_TASK_FILE), as a mounted ConfigMap would give it.
    wasm = guest_path("classify-c").read_bytes()
    task = {"id": "inline", "wasm": {"inline": base64.b64encode(wasm).decode(),
            "digest": sha256(wasm)}, "args": CLASSIFY_ARGS}  # fmt: skip
    task_file = host_file("task.json", json.dumps(task).encode())
    run = proplet(
        None,
        volumes=[(task_file, "/task/task.json", "ro")],
        env={"WASINN_TASK_FILE": "/task/task.json"},
    )
    assert_tiger_cat(run, wasm)


@pytest.mark.parametrize(
    ("guest", "media_type", "by_digest"),
    [
        ("classify-c", None, False),  # the layer is found by its .wasm title
        ("classify-rust", "application/vnd.wasm.content.layer.v1+wasm", True),
    ],
)
def test_classify_from_oci_registry(
    guest: str,
    media_type: str | None,
    by_digest: bool,
    guest_path: Callable[[str], Path],
    proplet: Callable[..., Run],
    registry: Registry,
) -> None:
    path = guest_path(guest)
    manifest = registry.push(f"wasm/{guest}", "v1", path, media_type)
    reference = f"{registry.host}/wasm/{guest}" + (f"@{manifest}" if by_digest else ":v1")
    wasm = path.read_bytes()
    task = {"id": f"oci-{guest}", "wasm": {"image": reference, "digest": sha256(wasm)},
            "args": CLASSIFY_ARGS}  # fmt: skip
    assert_tiger_cat(proplet(task, network="host"), wasm)


def test_oci_reference_not_in_registry(proplet: Callable[..., Run], registry: Registry) -> None:
    task = {"id": "oci-missing", "wasm": {"image": f"{registry.host}/wasm/nothing:v1"}}
    assert_failed(proplet(task, network="host"), f"cannot pull {registry.host}/wasm/nothing:v1")


def test_wrong_digest(
    guest_path: Callable[[str], Path],
    proplet: Callable[..., Run],
    wasm_server: Callable[[str, bytes], str],
) -> None:
    wasm = guest_path("classify-c").read_bytes()
    url = wasm_server("digest.wasm", wasm)
    wrong = sha256(b"another module")
    task = {"id": "digest", "wasm": {"url": url, "digest": wrong}, "args": CLASSIFY_ARGS}
    run = proplet(task, network="host")
    assert_failed(run, f"digest mismatch: expected {wrong}, got {sha256(wasm)}")
    assert run.stdout == ""


def test_unreachable_url(proplet: Callable[..., Run]) -> None:
    url = f"http://127.0.0.1:{free_port()}/classify.wasm"
    run = proplet({"id": "unreachable", "wasm": {"url": url}}, network="host")
    assert_failed(run, "Connection refused")
    assert url in run.summary["error"]


def test_not_a_wasm_file(
    proplet: Callable[..., Run], host_file: Callable[[str, bytes], Path]
) -> None:
    path = host_file("module.wasm", b"#!/bin/sh\necho this is not WebAssembly\n")
    run = proplet({"id": "not-wasm", "wasm": {"path": "/task/module.wasm"}},
                  volumes=[(path, "/task/module.wasm", "ro")])  # fmt: skip
    assert_failed(run, "not a WebAssembly binary")


def test_trapping_guest(
    proplet: Callable[..., Run], host_file: Callable[[str, bytes], Path]
) -> None:
    path = host_file("trap.wasm", bytes(wasmtime.wat2wasm(TRAP_WAT)))
    run = proplet({"id": "trap", "wasm": {"path": "/task/module.wasm"}},
                  volumes=[(path, "/task/module.wasm", "ro")])  # fmt: skip
    assert_failed(run, "wasm trap")
    assert run.returncode == 134
    assert run.summary["exitCode"] == 134


def test_no_task(proplet: Callable[..., Run]) -> None:
    assert_failed(proplet(None), "no task: set WASINN_TASK")


def test_runs_as_65532_on_a_read_only_root(proplet_image: str, tmp_path: Path) -> None:
    # No --user: the image's own USER is what a Pod without a securityContext gets.
    run = run_container(proplet_image, tmp_path, entrypoint="id", user=None)
    assert run.returncode == 0, run.describe()
    assert re.match(rf"uid={UID}\b.* gid={UID}\b", run.stdout), run.stdout
    script = (
        "touch /opt/wasinn/x 2>/dev/null && echo root-writable; "
        "touch /tmp/x && echo tmp-writable; "
        'echo "cache=$WASINN_CACHE_DIR home=$HOME models=$WASINN_MODELS_DIR"; '
        "wasinn --help >/dev/null && echo help-ok"
    )
    run = run_container(proplet_image, tmp_path, entrypoint="sh", args=["-c", script], user=None)
    assert run.returncode == 0, run.describe()
    assert run.stdout.split("\n") == [
        "tmp-writable",
        "cache=/tmp/wasinn-cache home=/tmp models=/models",
        "help-ok",
        "",
    ], run.describe()


def test_image_config(proplet_image: str) -> None:
    config = json.loads(podman("image", "inspect", proplet_image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["wasinn", "proplet", "run"]
    assert any(e == "WASINN_CACHE_DIR=/tmp/wasinn-cache" for e in config["Env"])


def test_external_engine_matches_embedded(
    proplet_cli_image: str,
    guest_path: Callable[[str], Path],
    proplet: Callable[..., Run],
) -> None:
    path = guest_path("classify-c")
    wasm = path.read_bytes()
    mount = [(path, "/task/module.wasm", "ro")]
    base = {"wasm": {"path": "/task/module.wasm"}, "cliArgs": ["-S", "nn"], "args": CLASSIFY_ARGS}
    embedded = proplet({**base, "id": "embedded", "engine": "embedded"},
                       image=proplet_cli_image, volumes=mount)  # fmt: skip
    assert_tiger_cat(embedded, wasm, engine="embedded")
    external = proplet({**base, "id": "cli", "engine": "wasmtime-cli"},
                       image=proplet_cli_image, volumes=mount)  # fmt: skip
    assert_tiger_cat(external, wasm, engine="wasmtime-cli")
    assert top5(external.stdout) == top5(embedded.stdout)
    # Propeller's convention: an external runtime in the environment runs every task.
    by_env = proplet({**base, "id": "env"}, image=proplet_cli_image, volumes=mount,
                     env={"PROPLET_EXTERNAL_WASM_RUNTIME": "/usr/local/bin/wasmtime"})  # fmt: skip
    assert_tiger_cat(by_env, wasm, engine="wasmtime-cli")
    assert top5(by_env.stdout) == top5(embedded.stdout)
