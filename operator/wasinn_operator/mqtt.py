"""Propeller's MQTT conventions: settings, topics, and a publisher that retries.

Settings come from `PROPLET_*` environment variables, with the `[proplet]` section of
`config.toml` (`PROPLET_CONFIG_FILE`, `PROPLET_CONFIG_SECTION`) as the fallback, as Propeller's
proplet reads them: tenant_id, channel_id, entity_id, api_key; the older names domain_id,
client_id and client_key are read too. Every topic is under `m/{tenant_id}/c/{channel_id}/`; the
username is the entity id and the password its API key.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

RESULTS_TOPIC = "control/proplet/results"
# (Propeller's name, the older name) of each setting, as environment variable suffixes and keys.
NAMES = {
    "tenant_id": ("tenant_id", "domain_id"),
    "channel_id": ("channel_id",),
    "entity_id": ("entity_id", "client_id"),
    "api_key": ("api_key", "client_key"),
}


class MQTTError(Exception):
    """Settings are malformed or the broker could not be reached in time."""


@dataclass(frozen=True)
class MQTTSettings:
    """Where and as whom to talk to a Propeller broker."""

    host: str
    port: int
    domain_id: str
    channel_id: str
    client_id: str = ""
    client_key: str = ""
    qos: int = 2
    timeout: float = 30.0
    instance_id: str = ""
    liveliness_interval: float = 10.0
    metrics_interval: float = 10.0
    namespace: str = "default"

    def topic(self, suffix: str) -> str:
        """`m/{domain}/c/{channel}/{suffix}`."""
        return f"m/{self.domain_id}/c/{self.channel_id}/{suffix}"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], config_file: Path | None = Path("config.toml")
    ) -> MQTTSettings | None:
        """Settings if the environment (or config.toml) names a broker channel, else None.

        A half configuration is an error naming what is missing: a tenant or channel without
        the other, an address or credentials without both, an entity id without its key (or the
        reverse). `config_file` is the default; `PROPLET_CONFIG_FILE` overrides it.
        """
        section = _config_section(environ, config_file)

        def get(name: str) -> str:
            for alias in NAMES[name]:
                value = environ.get(f"PROPLET_{alias.upper()}") or section.get(alias)
                if value:
                    return str(value)
            return ""

        found = {name: get(name) for name in NAMES}
        given = [f"PROPLET_{n.upper()}" for n, v in found.items() if v] + (
            ["PROPLET_MQTT_ADDRESS"] if environ.get("PROPLET_MQTT_ADDRESS") else []
        )
        if not given:
            return None
        required = ["tenant_id", "channel_id"]
        if found["entity_id"] or found["api_key"]:
            required += ["entity_id", "api_key"]  # credentials come in pairs
        missing = [n for n in required if not found[n]]
        if missing:
            names = ", ".join(f"{n}/PROPLET_{n.upper()}" for n in missing)
            raise MQTTError(
                f"MQTT is half configured ({', '.join(given)} given): missing {names} "
                f"(PROPLET_* variables or the [proplet] section of config.toml)"
            )
        address = urlparse(environ.get("PROPLET_MQTT_ADDRESS") or "tcp://localhost:1883")
        if address.scheme not in ("tcp", "mqtt") or not address.hostname:
            raise MQTTError(f"PROPLET_MQTT_ADDRESS {address.geturl()!r} is not tcp://HOST:PORT")
        try:
            qos = int(environ.get("PROPLET_MQTT_QOS", "2"))
            timeout = _seconds(environ.get("PROPLET_MQTT_TIMEOUT", "30s"))
            interval = _seconds(environ.get("PROPLET_LIVELINESS_INTERVAL", "10s"))
            metrics = _seconds(environ.get("PROPLET_METRICS_INTERVAL", "10"))
        except ValueError as exc:
            raise MQTTError(f"PROPLET_* setting: {exc}") from None
        if qos not in (0, 1, 2):
            raise MQTTError(f"PROPLET_MQTT_QOS {qos} is not 0, 1 or 2")
        namespace = (
            environ.get("PROPLET_MANAGER_K8S_NAMESPACE")
            or environ.get("PROPLET_NAMESPACE")
            or "default"
        )
        return cls(
            host=address.hostname,
            port=address.port or 1883,
            domain_id=found["tenant_id"],
            channel_id=found["channel_id"],
            client_id=found["entity_id"],
            client_key=found["api_key"],
            qos=qos,
            timeout=timeout,
            # The proplet id a manager knows: the entity id (a UUID), unless overridden.
            instance_id=environ.get("PROPLET_INSTANCE_ID")
            or found["entity_id"]
            or str(uuid.uuid4()),
            liveliness_interval=interval,
            metrics_interval=metrics,
            namespace=namespace,
        )


def _config_section(environ: Mapping[str, str], default: Path | None) -> dict[str, Any]:
    """The `[proplet]` section (or `PROPLET_CONFIG_SECTION`) of the config file, if any."""
    named = environ.get("PROPLET_CONFIG_FILE")
    path = Path(named) if named else default
    if path is None or not (path.is_file() or named):
        return {}
    name = environ.get("PROPLET_CONFIG_SECTION") or "proplet"
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MQTTError(f"PROPLET_CONFIG_FILE {path}: {exc}") from None
    section = document.get(name, {})
    if not isinstance(section, dict):
        raise MQTTError(f"{path}: [{name}] is not a table")
    return section


def _seconds(text: str) -> float:
    """Go-style durations as Propeller writes them: `10s`, `500ms`, `1m`, or plain seconds."""
    text = text.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    return float(text)


def _set_on_connect(event: threading.Event) -> Any:
    def on_connect(*_: object) -> None:
        event.set()

    return on_connect


def results_payload(
    task_id: str, proplet_id: str, results: object, error: str | None
) -> dict[str, Any]:
    """Propeller's `control/proplet/results` message: `results` is a string, `""` when there
    are none (a failed run), as the Rust proplet sends it."""
    if results is None:
        results = ""
    return {"task_id": task_id, "proplet_id": proplet_id, "results": results, "error": error}


def publish_once(
    settings: MQTTSettings, topic: str, payload: Mapping[str, Any], attempts: int = 5
) -> None:
    """Connect, publish one message at the configured QoS, wait for the broker's ack.

    Retries with exponential backoff; raises `MQTTError` after the last attempt.
    """
    body = json.dumps(payload)
    delay = 0.5
    last = "no attempt made"
    for attempt in range(attempts):
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{settings.instance_id}-pub-{uuid.uuid4().hex[:8]}",
            clean_session=True,
        )
        if settings.client_id:
            client.username_pw_set(settings.client_id, settings.client_key)
        connected = threading.Event()
        client.on_connect = _set_on_connect(connected)
        try:
            client.connect(settings.host, settings.port, keepalive=30)
            client.loop_start()
            if not connected.wait(settings.timeout):
                raise MQTTError("no CONNACK")
            info = client.publish(settings.topic(topic), body, qos=settings.qos)
            info.wait_for_publish(settings.timeout)
            if info.is_published():
                return
            last = "the broker did not acknowledge the message"
        except (OSError, MQTTError, RuntimeError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        finally:
            client.loop_stop()
            client.disconnect()
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise MQTTError(
        f"publishing to {settings.host}:{settings.port} failed after {attempts} attempts: {last}"
    )
