"""The task policy: hostile tasks, each with its exact error, and the tasks it lets through."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.policy import (
    PROPELLER_FIELDS,
    SPEC_FIELDS,
    Limits,
    PolicyError,
    TaskPolicy,
    check_spec,
    check_task,
    lexical,
)
from wasinn_operator.api.policyflags import add_policy_arguments, policy_env, policy_from_settings

pytestmark = pytest.mark.unit
STRICT = TaskPolicy()
RESERVED = (
    "reserved name (names starting LD_, WASINN_, PROPLET_, WASMTIME_, RUST_, OV_, OPENVINO_, "
    "PYTHON, MALLOC_ and PATH, GLIBC_TUNABLES, EXTERNAL_WASM_RUNTIME, INTEL_OPENVINO_DIR are "
    "reserved)"
)
MODELS_MOUNT = "the service's read-only models mount (always present); tasks cannot mount there"
ENGINE = "engine, cache and debugging options are set by the service, not by tasks"
NO_DIRS = "host directories are not allowed (allowed: none)"
DEFAULTS = Limits(timeout_seconds=300.0, max_memory_bytes=512 << 20)


def refused(cli_args: list[str], env: dict[str, str] | None = None, **kw: Any) -> str:
    with pytest.raises(PolicyError) as info:
        check_task(STRICT, cli_args, env or {}, fields=PROPELLER_FIELDS, **kw)
    return str(info.value)


HOSTILE_CLI_ARGS = [
    # Host directories: none allowed by default, whatever the spelling.
    (["--dir", "/"], f"cli_args: --dir /: {NO_DIRS}"),
    (["--dir", "/::/host"], f"cli_args: --dir /::/host: {NO_DIRS}"),
    (["--dir=/etc::/etc"], f"cli_args: --dir /etc::/etc: {NO_DIRS}"),
    (["--mapdir", "/host::/"], f"cli_args: --mapdir /host::/: {NO_DIRS}"),
    (["--dir", ".::."], f"cli_args: --dir .::.: {NO_DIRS}"),
    (["-S", "nn-graph=openvino::/etc"], f"cli_args: -S nn-graph=openvino::/etc: {NO_DIRS}"),
    (["--wasi", "nn,nn-graph=onnx::/root"], f"cli_args: --wasi nn-graph=onnx::/root: {NO_DIRS}"),
    (["--wasi-nn-graph", "openvino::/"], f"cli_args: --wasi-nn-graph openvino::/: {NO_DIRS}"),
    # A second mount at /models would shadow the service's read-only one.
    (["--dir=/models"], f"cli_args: --dir /models: the guest path /models is at or under "
                        f"/models, {MODELS_MOUNT}"),
    (["--dir", "/tmp::./models/x"], "cli_args: --dir /tmp::./models/x: the guest path "
                                    f"./models/x is at or under /models, {MODELS_MOUNT}"),
    (["--mapdir", "models::/tmp"], "cli_args: --mapdir models::/tmp: the guest path models is "
                                   f"at or under /models, {MODELS_MOUNT}"),
    # The host's environment.
    (["-S", "inherit-env"], "cli_args: -S inherit-env: the host environment is not available "
                            "to tasks"),
    (["-Sinherit-env=y"], "cli_args: -S inherit-env=y: the host environment is not available "
                          "to tasks"),
    (["--env", "SHIM_TOKEN"], "cli_args: --env SHIM_TOKEN: the host environment is not "
                              "available to tasks (give NAME=VALUE)"),
    (["--env", "LD_PRELOAD=/tmp/x.so"], f"cli_args: --env LD_PRELOAD=/tmp/x.so: {RESERVED}"),
    (["--env=PATH=/tmp"], f"cli_args: --env PATH=/tmp: {RESERVED}"),
    (["--env", "-Sinherit-network=y"], "cli_args: --env -Sinherit-network=y: a variable name "
                                       "must not start with '-'"),
    # The network.
    (["-S", "inherit-network"], "cli_args: -S inherit-network: network access is not available "
                                "to tasks"),
    (["-S", "tcp,udp"], "cli_args: -S tcp: network access is not available to tasks"),
    (["-S", "allow-ip-name-lookup=y"], "cli_args: -S allow-ip-name-lookup=y: network access is "
                                       "not available to tasks"),
    (["--wasi", "network"], "cli_args: --wasi network: network access is not available to "
                            "tasks"),
    # The engine, its caches and wasinn's own options.
    (["-C", "cache=y"], f"cli_args: -C cache=y: {ENGINE}"),
    (["--codegen", "cache-config=/tmp/evil.toml"], "cli_args: --codegen "
                                                   f"cache-config=/tmp/evil.toml: {ENGINE}"),
    (["-O", "opt-level=0"], f"cli_args: -O opt-level=0: {ENGINE}"),
    (["-D", "debug-info"], f"cli_args: -D debug-info: {ENGINE}"),
    (["--profile", "perfmap"], f"cli_args: --profile perfmap: {ENGINE}"),
    (["--preload", "m=/tmp/m.wasm"], f"cli_args: --preload m=/tmp/m.wasm: {ENGINE}"),
    (["--allow-precompiled"], f"cli_args: --allow-precompiled: {ENGINE}"),
    (["-W", "max-wasm-stack=1G"], "cli_args: -W max-wasm-stack=1G: engine tuning is set by the "
                                  "service (tasks may set -W timeout and -W max-memory-size)"),
    (["--cache-dir", "/tmp/c"], "cli_args: --cache-dir /tmp/c: wasinn options are set by the "
                                "service, not by tasks"),
    (["--models-dir=/"], "cli_args: --models-dir /: wasinn options are set by the service, "
                         "not by tasks"),
    (["--no-cache"], "cli_args: --no-cache: wasinn options are set by the service, not by "
                     "tasks"),
    (["--precision", "f16"], "cli_args: --precision f16: wasinn options are set by the service, "
                             "not by tasks"),
    # Limits above the maxima.
    (["-W", "timeout=10h"], "cli_args: -W timeout=10h: above the service maximum of 3600 s"),
    (["--wasm=max-memory-size=8GiB"], "cli_args: --wasm max-memory-size=8GiB: above the "
                                      "service maximum of 4 GiB"),
    # Everything else is unknown, and what is unknown is refused.
    (["--frobnicate"], "cli_args: unknown flag '--frobnicate'"),
    (["-W", "fuel=1"], "cli_args: -W: unknown or unsupported wasm option 'fuel'"),
    (["-S", "keyvalue"], "cli_args: -S: unknown or unsupported WASI option 'keyvalue'"),
    (["evil.wasm"], "cli_args: unexpected argument 'evil.wasm' among the runtime flags"),
    (["--", "x"], "cli_args: '--' is not allowed among the runtime flags"),
    (["--dir"], "cli_args: --dir needs a value"),
    (["--invoke", "-Sinherit-env"], "cli_args: --invoke -Sinherit-env: an export name must not "
                                    "start with '-'"),
]  # fmt: skip


@pytest.mark.parametrize(("cli_args", "message"), HOSTILE_CLI_ARGS)
def test_hostile_cli_args(cli_args: list[str], message: str) -> None:
    assert refused(cli_args) == message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LD_PRELOAD": "/tmp/x.so"}, f"env: LD_PRELOAD: {RESERVED}"),
        ({"LD_LIBRARY_PATH": "/tmp"}, f"env: LD_LIBRARY_PATH: {RESERVED}"),
        ({"PATH": "/tmp"}, f"env: PATH: {RESERVED}"),
        ({"WASINN_POLICY": "{}"}, f"env: WASINN_POLICY: {RESERVED}"),
        ({"PROPLET_CLIENT_KEY": "x"}, f"env: PROPLET_CLIENT_KEY: {RESERVED}"),
        ({"WASMTIME_BACKTRACE_DETAILS": "1"}, f"env: WASMTIME_BACKTRACE_DETAILS: {RESERVED}"),
        ({"GLIBC_TUNABLES": "x"}, f"env: GLIBC_TUNABLES: {RESERVED}"),
        ({"OV_CACHE_DIR": "/"}, f"env: OV_CACHE_DIR: {RESERVED}"),
        ({"PYTHONPATH": "/tmp"}, f"env: PYTHONPATH: {RESERVED}"),
        ({"ld_preload": "/tmp/x.so"}, f"env: ld_preload: {RESERVED}"),
        ({"-S": "inherit-env"}, "env: -S: a variable name must not start with '-'"),
    ],
)
def test_hostile_env(env: dict[str, str], message: str) -> None:
    assert refused([], env) == message


def test_field_sizes_and_timeout_field() -> None:
    assert refused(["--env", "A=" + "x" * 70_000]) == (
        "cli_args: 70007 bytes; the service allows at most 65536"
    )
    assert refused([], {"A": "é" * 40_000}) == "env: 80001 bytes; the service allows at most 65536"
    with pytest.raises(PolicyError, match=r"^inputs: 66000 bytes; the service allows at most"):
        check_task(STRICT, [], {}, ["x" * 66_000], fields=PROPELLER_FIELDS)
    with pytest.raises(PolicyError) as info:
        check_task(STRICT, [], {}, timeout_seconds=7200, fields=SPEC_FIELDS)
    assert str(info.value) == "spec.timeoutSeconds: 7200: above the service maximum of 3600 s"


@pytest.mark.parametrize(
    ("cli_args", "env", "limits"),
    [
        ([], {}, DEFAULTS),
        (["--wasi-modules=experimental-wasi-nn"], {"MODEL_DIR": "/models/m"}, DEFAULTS),
        (["run", "-S", "nn", "--invoke", "main", "--env", "A=1", "-S", "cli,common"], {}, DEFAULTS),
        (["-S", "nn=n,inherit-env=n,tcp=n"], {}, DEFAULTS),  # turning things off asks for nothing
        (["--wasi-modules=default,wasi-common"], {"PATHNAME": "x", "MY_LD_PATH": "y"}, None),
        (["-W", "timeout=30s"], {}, Limits(30.0, 512 << 20)),
        (["-Wtimeout=1h,max-memory-size=4GiB"], {}, Limits(3600.0, 4 << 30)),
        (["-W", "max-memory-size=64MiB", "--wasm", "max-memory-size=1GiB"], {},
         Limits(300, 64 << 20)),
    ],
)  # fmt: skip
def test_allowed_tasks_and_their_limits(
    cli_args: list[str], env: dict[str, str], limits: Limits | None
) -> None:
    got = check_task(STRICT, cli_args, env, ["/models/m/x.f32", 7])
    if limits is not None:
        assert got == limits


def test_timeout_seconds_and_w_timeout_the_shorter_wins() -> None:
    limits = check_task(STRICT, ["-W", "timeout=2m"], {}, timeout_seconds=30)
    assert limits.timeout_seconds == 30.0
    limits = check_task(STRICT, ["-W", "timeout=2m"], {}, timeout_seconds=3000)
    assert limits.timeout_seconds == 120.0


def test_allowed_host_dirs_are_compared_after_resolving(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (data / "link").symlink_to(secret)  # inside the allowed tree, naming what is outside
    (tmp_path / "alias").symlink_to(data)  # outside, naming what is inside
    policy = TaskPolicy(allow_host_dirs=(str(data),))

    def check(*cli_args: str) -> Limits:
        return check_task(policy, list(cli_args), {})

    assert check("--dir", f"{data}::/data") == DEFAULTS
    assert check("--dir", f"{data}/in/::/in", "-S", f"nn-graph=openvino::{data}/in") == DEFAULTS
    assert check("--dir", f"{tmp_path}/alias/in::/in") == DEFAULTS
    allowed = f"(allowed: {data})"
    cases = {
        f"{data}/../secret": f"host directory {secret}",
        f"{data}/link": f"host directory {secret} (resolved from {data}/link)",
        f"{data}-other": f"host directory {data}-other",
        "/": "host directory /",
    }
    for host, shown in cases.items():
        with pytest.raises(PolicyError) as info:
            check("--dir", f"{host}::/x")
        assert str(info.value) == f"cliArgs: --dir {host}::/x: {shown} is not allowed {allowed}"
    with pytest.raises(PolicyError) as info:
        check("--dir", "data::/x")
    assert str(info.value) == (
        f"cliArgs: --dir data::/x: a host directory must be an absolute path {allowed}"
    )
    # Lexically (the operator, which cannot see the Pod's files) the link is inside.
    assert check_task(policy, ["--dir", f"{data}/link::/x"], {}, resolve=lexical) == DEFAULTS
    with pytest.raises(PolicyError, match="is not allowed"):
        check_task(policy, ["--dir", f"{data}/../secret::/x"], {}, resolve=lexical)


def test_guest_models_is_refused_even_for_an_allowed_dir(tmp_path: Path) -> None:
    policy = TaskPolicy(allow_host_dirs=(str(tmp_path),))
    with pytest.raises(PolicyError, match=r"guest path /models/ is at or under /models"):
        check_task(policy, ["--dir", f"{tmp_path}::/models/"], {})
    check_task(policy, ["--dir", f"{tmp_path}::/modelsx"], {})
    check_task(policy, ["--dir", f"{tmp_path}::/"], {})  # a shorter preopen never wins /models


def spec(**fields: Any) -> WasiNNTaskSpec:
    return WasiNNTaskSpec.model_validate({"wasm": {"path": "/m.wasm"}, **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cliArgs": ["--dir", "/::/host"]}, f"spec.cliArgs: --dir /::/host: {NO_DIRS}"),
        ({"env": {"LD_PRELOAD": "x"}}, f"spec.env: LD_PRELOAD: {RESERVED}"),
        ({"timeoutSeconds": 86400}, "spec.timeoutSeconds: 86400: above the service maximum of "
                                    "3600 s"),
        ({"models": {"mountPath": "/usr/lib"}}, "spec.models.mountPath: /usr/lib: the models "
                                                "volume is mounted at /models only"),
        ({"models": {"mountPath": "/tmp"}}, "spec.models.mountPath: /tmp: the models volume is "
                                            "mounted at /models only"),
        ({"models": {"readOnly": False}}, "spec.models.readOnly: false: the models volume is "
                                          "mounted read-only"),
        ({"models": {"subPath": "../other"}}, "spec.models.subPath: ../other: must be a relative "
                                              "path inside the claim, without '..'"),
        ({"models": {"subPath": "/etc"}}, "spec.models.subPath: /etc: must be a relative path "
                                          "inside the claim, without '..'"),
        ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations[0]: tolerating every taint "
                                                    "would admit the task to control-plane nodes "
                                                    "(allowed: tolerations of other taints)"),
        ({"tolerations": [{"key": "gpu", "operator": "Exists"},
                          {"key": "node-role.kubernetes.io/control-plane",
                           "effect": "NoSchedule"}]},
         "spec.tolerations[1]: tolerating node-role.kubernetes.io/control-plane would admit the "
         "task to control-plane nodes (allowed: tolerations of other taints)"),
    ],
)  # fmt: skip
def test_hostile_specs(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        check_spec(STRICT, spec(**fields))
    assert str(info.value) == message


def test_allowed_specs() -> None:
    fine = spec(
        cliArgs=["-S", "nn"],
        env={"MODEL_DIR": "/models/m"},
        args=["x"],
        timeoutSeconds=60,
        models={"claimName": "zoo", "mountPath": "/models/", "subPath": "v2/int8"},
        nodeSelector={"zone": "a"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        resources={"limits": {"memory": "2Gi"}},
    )
    assert check_spec(STRICT, fine) == Limits(60.0, 512 << 20)


def test_policy_json_round_trip_and_errors() -> None:
    policy = TaskPolicy(
        allow_host_dirs=("/data/", "/srv/../scratch"),
        default_timeout=60,
        max_timeout=600,
        default_max_memory=64 << 20,
        max_memory=1 << 30,
        max_field_bytes=4096,
    )
    assert policy.allow_host_dirs == ("/data", "/scratch")
    assert TaskPolicy.from_json(policy.to_json()) == policy
    assert TaskPolicy.from_json("{}") == TaskPolicy()
    assert json.loads(TaskPolicy().to_json())["allowHostDirs"] == []
    bad = {
        "[]": "WASINN_POLICY: not a JSON object",
        '{"allowHostDir": []}': "WASINN_POLICY: unknown field(s) allowHostDir",
        '{"allowHostDirs": "/"}': "WASINN_POLICY: allowHostDirs must be a list of paths",
        '{"allowHostDirs": ["data"]}': "WASINN_POLICY: allowed host directory 'data' is not an "
        "absolute path",
        '{"maxTimeoutSeconds": "1h"}': "WASINN_POLICY: max_timeout: '1h' is not a number",
        '{"maxTimeoutSeconds": 60}': "WASINN_POLICY: the default timeout (300 s) must be "
        "positive and at most the maximum (60 s)",
        '{"defaultMaxMemoryBytes": 0}': "WASINN_POLICY: the default max memory (0 bytes) must "
        "be positive and at most the maximum (4 GiB)",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError) as info:
            TaskPolicy.from_json(text)
        assert str(info.value) == message


def test_settings_flags_win_over_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    environ = {
        "WASINN_ALLOW_HOST_DIRS": "/data:/scratch",
        "WASINN_DEFAULT_TIMEOUT": "1m",
        "WASINN_MAX_TIMEOUT": "2h",
        "WASINN_MAX_MEMORY": "2GiB",
    }
    assert policy_from_settings(environ) == TaskPolicy(
        allow_host_dirs=("/data", "/scratch"),
        default_timeout=60,
        max_timeout=7200,
        max_memory=2 << 30,
    )
    args = parser.parse_args(
        ["--allow-host-dir", "/a", "--allow-host-dir", "/b", "--default-max-memory", "256MiB"]
    )
    assert policy_env(args) == {
        "WASINN_ALLOW_HOST_DIRS": "/a:/b",
        "WASINN_DEFAULT_MAX_MEMORY": "256MiB",
    }
    policy = policy_from_settings(environ, args)
    assert policy.allow_host_dirs == ("/a", "/b")
    assert (policy.default_max_memory, policy.max_memory) == (256 << 20, 2 << 30)
    assert policy_from_settings({}) == TaskPolicy()
    with pytest.raises(ValueError, match=r"^--max-timeout \(WASINN_MAX_TIMEOUT\): 'soon' is not"):
        policy_from_settings({"WASINN_MAX_TIMEOUT": "soon"})
    with pytest.raises(ValueError) as info:
        policy_from_settings({"WASINN_DEFAULT_TIMEOUT": "2h", "WASINN_MAX_TIMEOUT": "1h"})
    assert str(info.value) == (
        "the default timeout (7200 s) must be positive and at most the maximum (3600 s)"
    )


def test_describe_says_what_tasks_may_have() -> None:
    assert STRICT.describe() == (
        "host directories: none; deadline 300 s (at most 3600 s); linear memory 512 MiB "
        "(at most 4 GiB); cli_args, args and env each at most 64 KiB; model origins: none "
        "(models up to 4 GiB)"
    )
