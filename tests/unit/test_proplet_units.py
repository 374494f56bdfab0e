"""Task validation, the termination summary, external command lines and MQTT settings."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from wasinn_operator.api import RunSummary, TaskSpec
from wasinn_operator.api.policy import Limits
from wasinn_operator.api.wasmflags import FlagError
from wasinn_operator.mqtt import MQTTError, MQTTSettings
from wasinn_operator.proplet import TaskError, external_command, load_task, task_flags

pytestmark = pytest.mark.unit
DIGEST = "sha256:" + "a" * 64
DEFAULTS = Limits(timeout_seconds=300.0, max_memory_bytes=512 << 20)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"wasm": {}}, "exactly one of url, path, inline, image, configMapKeyRef must be set"),
        ({"wasm": {"url": "http://x/a.wasm", "path": "/a.wasm"}}, "got url, path"),
        ({"wasm": {"path": "/a.wasm", "digest": "sha256:xyz"}}, "String should match pattern"),
        ({"wasm": {"inline": "not base64!"}}, "not valid base64"),
        ({"wasm": {"url": "ftp://x"}}, "String should match pattern '^https?://'"),
        ({"wasm": {"path": "/a"}, "env": {"BAD NAME": "x"}}, "invalid environment variable"),
        ({"wasm": {"path": "/a"}, "timeoutSeconds": -1}, "greater than 0"),
        ({"wasm": {"path": "/a"}, "engine": "wamr"}, "'embedded' or 'wasmtime-cli'"),
    ],
)
def test_invalid_tasks_name_the_field(task: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError) as info:
        load_task({"WASINN_TASK": json.dumps(task)})
    assert message in str(info.value)


def test_task_from_file_with_every_field(tmp_path: Path) -> None:
    task = {
        "id": "t1", "name": "n", "wasm": {"image": "reg/x:1", "digest": DIGEST},
        "cliArgs": ["-S", "nn"], "args": ["a"], "env": {"K.1-x": "v"}, "daemon": True,
        "timeoutSeconds": 5, "engine": "wasmtime-cli", "device": "GPU",
        "nodeSelector": {"ignored": "by the proplet"},
    }  # fmt: skip
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    spec = load_task({"WASINN_TASK_FILE": str(path)})
    assert spec.wasm.kind == "image"
    assert (spec.cli_args, spec.timeout_seconds, spec.device) == (["-S", "nn"], 5, "GPU")
    with pytest.raises(TaskError, match="no task"):
        load_task({})


def test_summary_fits_the_termination_message() -> None:
    summary = RunSummary(state="Failed", exitCode=1, error="E" * 6000, stdout="\x01é" * 3000)
    message = summary.to_message()
    assert len(message.encode()) <= 4096
    parsed = json.loads(message)
    assert parsed["stdoutTruncated"] is True
    assert parsed["error"].startswith("EEE")
    small = RunSummary(state="Completed", exitCode=0, stdout="ok\n")
    assert json.loads(small.to_message())["stdoutTruncated"] is False


def test_external_command_modern_wasmtime(tmp_path: Path, models_dir: Path) -> None:
    spec = TaskSpec.model_validate(
        {"id": "t", "wasm": {"path": "/a"}, "cliArgs": ["--wasi-modules=experimental-wasi-nn"],
         "args": ["in.f32"], "env": {"MODEL_DIR": "/models/x"}}
    )  # fmt: skip
    cmd = external_command(
        "wasmtime", (48, 0, 8), spec, task_flags(spec), tmp_path / "t.wasm", models_dir
    )
    assert cmd[:4] == ["wasmtime", "run", "-S", "nn"]
    assert "--wasi-modules=experimental-wasi-nn" not in cmd
    assert cmd[-2:] == [str(tmp_path / "t.wasm"), "in.f32"]
    assert cmd[cmd.index("--env") : cmd.index("--env") + 2] == ["--env", "MODEL_DIR=/models/x"]
    assert ["--dir", f"{models_dir}::/models"] == cmd[cmd.index("--dir") : cmd.index("--dir") + 2]
    graphs = [cmd[i + 1] for i, t in enumerate(cmd) if t == "-S" and "nn-graph" in cmd[i + 1]]
    assert graphs == [f"nn-graph=openvino::{models_dir / 'efficientnet-lite0'}"]


def test_external_command_old_wasmtime(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate({"wasm": {"path": "/a"}, "env": {"A": "1"}})
    cmd = external_command(
        "wasmtime", (12, 0, 0), spec, task_flags(spec), tmp_path / "t.wasm", None
    )
    assert cmd == ["wasmtime", "--wasi-modules=experimental-wasi-nn", "--env", "A=1",
                   str(tmp_path / "t.wasm")]  # fmt: skip


def test_mqtt_settings_from_env_and_config(tmp_path: Path) -> None:
    assert MQTTSettings.from_env({}, None) is None
    config = tmp_path / "config.toml"
    config.write_text('[proplet]\ndomain_id = "d"\nchannel_id = "c"\nclient_id = "u"\n')
    settings = MQTTSettings.from_env(
        {"PROPLET_MQTT_ADDRESS": "tcp://127.0.0.1:1999", "PROPLET_CLIENT_KEY": "k",
         "PROPLET_MQTT_QOS": "1", "PROPLET_LIVELINESS_INTERVAL": "500ms"},
        config,
    )  # fmt: skip
    assert settings is not None
    assert (settings.host, settings.port, settings.qos) == ("127.0.0.1", 1999, 1)
    assert (settings.client_id, settings.client_key) == ("u", "k")
    assert settings.liveliness_interval == 0.5
    assert settings.topic("control/proplet/results") == "m/d/c/c/control/proplet/results"
    # The old client id is the entity id, and so the proplet id; the namespace as Propeller's
    # proplet defaults it.
    assert settings.instance_id == "u" and settings.namespace == "default"
    anonymous = MQTTSettings.from_env({"PROPLET_TENANT_ID": "t", "PROPLET_CHANNEL_ID": "c"}, None)
    assert anonymous is not None and uuid.UUID(anonymous.instance_id)  # no entity: a random UUID


def test_mqtt_settings_propeller_names(tmp_path: Path) -> None:
    # Propeller's proplet (proplet/src/config.rs): PROPLET_TENANT_ID, _CHANNEL_ID, _ENTITY_ID,
    # _API_KEY, or the same keys in the [proplet] section of PROPLET_CONFIG_FILE (config.toml).
    entity = str(uuid.uuid4())
    env = {"PROPLET_TENANT_ID": "t", "PROPLET_CHANNEL_ID": "c", "PROPLET_ENTITY_ID": entity,
           "PROPLET_API_KEY": "k", "PROPLET_MANAGER_K8S_NAMESPACE": "edge",
           "PROPLET_METRICS_INTERVAL": "5"}  # fmt: skip
    settings = MQTTSettings.from_env(env, None)
    assert settings is not None
    assert (settings.domain_id, settings.client_id, settings.client_key) == ("t", entity, "k")
    assert settings.instance_id == entity  # the proplet id is the entity id
    assert (settings.namespace, settings.metrics_interval) == ("edge", 5.0)
    config = tmp_path / "proplet.toml"
    config.write_text(
        f'[edge]\ntenant_id = "t2"\nchannel_id = "c2"\nentity_id = "{entity}"\napi_key = "k2"\n'
    )
    settings = MQTTSettings.from_env(
        {"PROPLET_CONFIG_FILE": str(config), "PROPLET_CONFIG_SECTION": "edge"}, None
    )
    assert settings is not None
    assert settings.topic("x") == "m/t2/c/c2/x"
    assert (settings.client_id, settings.client_key) == (entity, "k2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROPLET_MQTT_ADDRESS": "tcp://h:1"},
         "missing tenant_id/PROPLET_TENANT_ID, channel_id/PROPLET_CHANNEL_ID"),
        ({"PROPLET_TENANT_ID": "t", "PROPLET_ENTITY_ID": "e"},
         r"\(PROPLET_TENANT_ID, PROPLET_ENTITY_ID given\): missing "
         "channel_id/PROPLET_CHANNEL_ID, api_key/PROPLET_API_KEY"),
        ({"PROPLET_DOMAIN_ID": "d", "PROPLET_CHANNEL_ID": "c", "PROPLET_CLIENT_KEY": "k"},
         "missing entity_id/PROPLET_ENTITY_ID"),
        ({"PROPLET_CONFIG_FILE": "/nonexistent/config.toml"}, "PROPLET_CONFIG_FILE"),
        ({"PROPLET_DOMAIN_ID": "d", "PROPLET_CHANNEL_ID": "c", "PROPLET_MQTT_ADDRESS": "h:1"},
         "is not tcp://HOST:PORT"),
        ({"PROPLET_DOMAIN_ID": "d", "PROPLET_CHANNEL_ID": "c", "PROPLET_MQTT_QOS": "3"},
         "is not 0, 1 or 2"),
    ],
)  # fmt: skip
def test_mqtt_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(MQTTError, match=message):
        MQTTSettings.from_env(env, None)


def test_pydantic_is_strict_about_unknown_wasm_fields() -> None:
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"wasm": {"path": "/a", "sha": "x"}})


def test_external_command_gives_wasmtime_sizes_in_bytes(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate(
        {"wasm": {"path": "/a"},
         "cliArgs": ["-W", "max-memory-size=512MiB,timeout=30s", "-Wmax-wasm-stack=1M"]}
    )  # fmt: skip
    cmd = external_command(
        "wasmtime", (48, 0, 8), spec, task_flags(spec), tmp_path / "t.wasm", None
    )
    assert cmd[2:5] == ["-W", "max-memory-size=536870912,timeout=30s", "-Wmax-wasm-stack=1048576"]
    bad = TaskSpec.model_validate(
        {"wasm": {"path": "/a"}, "cliArgs": ["-W", "max-memory-size=lots"]}
    )
    with pytest.raises(TaskError, match="cliArgs: -W max-memory-size: 'lots' is not a size"):
        task_flags(bad)


class _Response:
    """Just enough of a streamed `requests` response."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status_code, self.reason, self.body = status, "Reason", body

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def iter_content(self, _size: int) -> list[bytes]:
        return [self.body]


def test_http_fetch_retries_a_server_that_is_briefly_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection refused and 503 (a shim restarting) are retried; a 404 is not."""
    import requests  # noqa: PLC0415

    from wasinn_operator.proplet import fetch  # noqa: PLC0415

    wasm = b"\0asm\1\0\0\0"
    answers: list[object] = [requests.ConnectionError("Connection refused"), _Response(503)]
    answers.append(_Response(200, wasm))
    calls: list[str] = []

    def get(url: str, **_: object) -> object:
        calls.append(url)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(fetch, "HTTP_RETRY_DELAYS", (0.0, 0.0, 0.0))
    monkeypatch.setattr(requests, "get", get)  # fetch imports it when it fetches
    assert fetch._http_get("http://shim/a.wasm", 100) == wasm
    assert len(calls) == 3
    answers[:] = [_Response(404), _Response(200, wasm)]
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        fetch._http_get("http://shim/a.wasm", 100)
    answers[:] = [requests.ConnectionError("Connection refused")] * 4
    with pytest.raises(fetch.FetchError, match="Connection refused"):
        fetch._http_get("http://shim/a.wasm", 100)
    assert not answers


def test_external_command_from_the_parsed_flags(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate(
        {"wasm": {"path": "/a"}, "env": {"A": "1"},
         "cliArgs": ["run", "--wasi-modules=-experimental-wasi-nn", "--invoke", "f",
                     "--wasm=timeout=5s"]}
    )  # fmt: skip
    wasm = str(tmp_path / "t.wasm")
    cmd = external_command(
        "wasmtime", (48, 0, 8), spec, task_flags(spec), tmp_path / "t.wasm", None, DEFAULTS
    )
    # The legacy switch-off becomes -S nn=n (and no -S nn is added); the policy's memory limit
    # is added when the task set none; `run` comes once, first.
    assert cmd == ["wasmtime", "run", "-S", "nn=n", "--invoke", "f", "--wasm=timeout=5s",
                   "-W", f"max-memory-size={512 << 20}", "--env", "A=1", wasm]  # fmt: skip
    own = spec.model_copy(update={"cli_args": ["-W", "max-memory-size=64MiB"]})
    cmd = external_command(
        "wasmtime", (48, 0, 8), own, task_flags(own), tmp_path / "t.wasm", None, DEFAULTS
    )
    assert cmd.count("-W") == 1 and f"max-memory-size={64 << 20}" in cmd
    old = external_command(
        "wasmtime", (12, 0, 0), spec, task_flags(spec), tmp_path / "t.wasm", None, DEFAULTS
    )
    assert "-W" not in old and old[1] == "--wasi-modules=-experimental-wasi-nn"
    smuggled = spec.model_copy(update={"env": {"-Sinherit-env": "y"}})
    with pytest.raises(FlagError, match="a variable name must not start with '-'"):
        external_command(
            "wasmtime", (48, 0, 8), smuggled, task_flags(smuggled), tmp_path / "t.wasm", None
        )


def test_external_command_mounts_model_sources(tmp_path: Path, models_dir: Path) -> None:
    spec = TaskSpec.model_validate({"wasm": {"path": "/a"}})
    # The proplet hands wasmtime a link named after the source (graphs are named by basename).
    link = tmp_path / "sources" / "net"
    link.parent.mkdir()
    link.symlink_to(models_dir / "efficientnet-lite0", target_is_directory=True)
    onnx = tmp_path / "sources" / "ocr"
    onnx.symlink_to(models_dir / "ppocr-cls-onnx", target_is_directory=True)
    modern = external_command(
        "wasmtime", (48, 0, 8), spec, task_flags(spec), tmp_path / "t.wasm", None, None,
        {"net": link, "ocr": onnx},
    )  # fmt: skip
    assert modern[modern.index("--dir") :][:6] == [
        "--dir", f"{link}::/models/net", "-S", f"nn-graph=openvino::{link}",
        "--dir", f"{onnx}::/models/ocr",
    ]  # fmt: skip
    old = external_command(
        "wasmtime", (12, 0, 0), spec, task_flags(spec), tmp_path / "t.wasm", None, None,
        {"net": link},
    )  # fmt: skip
    assert ["--mapdir", f"/models/net::{link}"] == old[old.index("--mapdir") :][:2]
