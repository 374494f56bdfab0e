"""The proplet applies the task policy itself: a task that bypassed the API still cannot reach
the host, and every run gets the policy's deadline and memory limit."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from wasinn_operator.api.policy import TaskPolicy

from .conftest import wat
from .test_external_engine import wasmtime_cli
from .test_proplet import proplet

pytestmark = pytest.mark.runtime
__all__ = ["wasmtime_cli"]  # a fixture, used by name
READ_HOST = {"inline": base64.b64encode(wat("read_host")).decode()}
NO_DIRS = "host directories are not allowed (allowed: none)"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A private host directory holding secret.txt."""
    path = tmp_path.resolve() / "private"
    path.mkdir()
    (path / "secret.txt").write_text("the host's secret\n")
    return path


@pytest.mark.parametrize(
    ("cli_args", "message"),
    [
        (["--dir", "/::/host"], f"cliArgs: --dir /::/host: {NO_DIRS}"),
        (["--dir", "{secret}::/host"], f"cliArgs: --dir {{secret}}::/host: {NO_DIRS}"),
        (["--mapdir", "/host::{secret}"], f"cliArgs: --mapdir /host::{{secret}}: {NO_DIRS}"),
        (["-S", "inherit-env"], "cliArgs: -S inherit-env: the host environment is not available "
                                "to tasks"),
    ],
)  # fmt: skip
def test_a_refused_task_never_runs(
    cli_args: list[str], message: str, secret: Path, models_dir: Path, tmp_path: Path
) -> None:
    args = [a.format(secret=secret) for a in cli_args]
    task = {"wasm": READ_HOST, "cliArgs": args}
    proc, summary = proplet(task, models_dir, tmp_path)  # no WASINN_POLICY: the strict default
    assert proc.returncode == 1
    assert summary["state"] == "Failed"
    assert summary["error"] == message.format(secret=secret)
    assert proc.stdout == ""  # the guest never ran, so it read nothing
    assert "secret" not in str(summary.get("stdout"))


def test_an_allowed_directory_is_read_and_a_symlink_out_of_it_is_not(
    secret: Path, models_dir: Path, tmp_path: Path
) -> None:
    allowed = tmp_path.resolve() / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "secret.txt").write_text("shared data\n")
    (allowed / "link").symlink_to(secret)
    policy = TaskPolicy(allow_host_dirs=(str(allowed),)).to_json()
    task = {"wasm": READ_HOST, "cliArgs": ["--dir", f"{allowed}/data::/host"]}
    proc, summary = proplet(task, models_dir, tmp_path, WASINN_POLICY=policy)
    assert (proc.returncode, summary["state"]) == (0, "Completed"), summary
    assert proc.stdout == "shared data\n"  # the guest reads what it is given
    task["cliArgs"] = ["--dir", f"{allowed}/link::/host"]
    proc, summary = proplet(task, models_dir, tmp_path, WASINN_POLICY=policy)
    assert summary["error"] == (
        f"cliArgs: --dir {allowed}/link::/host: host directory {secret} (resolved from "
        f"{allowed}/link) is not allowed (allowed: {allowed})"
    )
    assert proc.stdout == ""


def test_the_policy_limits_bound_every_run(models_dir: Path, tmp_path: Path) -> None:
    policy = TaskPolicy(
        default_max_memory=16 << 20, max_memory=32 << 20, default_timeout=60, max_timeout=60
    )
    bomb = {"wasm": {"inline": base64.b64encode(wat("grow")).decode()}}
    proc, summary = proplet(bomb, models_dir, tmp_path, WASINN_POLICY=policy.to_json())
    assert summary["state"] == "Failed"
    assert "of the 16.0 MiB limit; a memory.grow past the limit was likely refused" in str(
        summary["error"]
    )
    asks = {**bomb, "cliArgs": ["-W", "max-memory-size=64MiB"]}
    proc, summary = proplet(asks, models_dir, tmp_path, WASINN_POLICY=policy.to_json())
    assert summary["error"] == (
        "cliArgs: -W max-memory-size=64MiB: above the service maximum of 32 MiB"
    )
    spin = {"wasm": {"inline": base64.b64encode(wat("spin")).decode()}, "timeoutSeconds": 600}
    proc, summary = proplet(spin, models_dir, tmp_path, WASINN_POLICY=policy.to_json())
    assert summary["error"] == "timeoutSeconds: 600: above the service maximum of 60 s"
    quick = TaskPolicy(default_timeout=1).to_json()
    spin.pop("timeoutSeconds")
    proc, summary = proplet(spin, models_dir, tmp_path, WASINN_POLICY=quick)
    assert proc.returncode == 124  # the default deadline ends a task that set none
    assert str(summary["error"]).startswith("timed out after 1 s")


def test_a_malformed_policy_stops_the_proplet(models_dir: Path, tmp_path: Path) -> None:
    task = {"wasm": READ_HOST}
    (tmp_path / "termination-log").write_text("{}")  # the proplet writes none: it cannot start
    proc, _ = proplet(task, models_dir, tmp_path, WASINN_POLICY='{"allowHostDirs": "/"}')
    assert proc.returncode == 1
    assert "WASINN_POLICY: allowHostDirs must be a list of paths" in proc.stderr


def test_the_external_engine_gets_the_same_policy_and_limits(
    wasmtime_cli: str, secret: Path, models_dir: Path, tmp_path: Path
) -> None:
    external = {"PROPLET_EXTERNAL_WASM_RUNTIME": wasmtime_cli}
    task = {"wasm": READ_HOST, "cliArgs": ["--dir", f"{secret}::/host"]}
    proc, summary = proplet(task, models_dir, tmp_path, **external)
    assert (summary["engine"], summary["error"]) == (
        "wasmtime-cli",
        f"cliArgs: --dir {secret}::/host: {NO_DIRS}",
    )
    assert proc.stdout == ""
    wide = TaskPolicy(allow_host_dirs=(str(secret),)).to_json()
    proc, summary = proplet(task, models_dir, tmp_path, WASINN_POLICY=wide, **external)
    assert (summary["state"], proc.stdout) == ("Completed", "the host's secret\n"), summary
    # 256 MiB of initial memory: fine under the default limit, refused under a 16 MiB one.
    big = {"wasm": {"inline": base64.b64encode(wat("big_memory")).decode()}}
    proc, summary = proplet(big, models_dir, tmp_path, **external)
    assert summary["state"] == "Completed", summary
    small = TaskPolicy(default_max_memory=16 << 20).to_json()
    proc, summary = proplet(big, models_dir, tmp_path, WASINN_POLICY=small, **external)
    assert summary["state"] == "Failed", summary
    spin = {"wasm": {"inline": base64.b64encode(wat("spin")).decode()}}
    quick = TaskPolicy(default_timeout=1).to_json()
    proc, summary = proplet(spin, models_dir, tmp_path, WASINN_POLICY=quick, **external)
    assert (proc.returncode, summary["error"]) == (124, "timed out after 1 s")
