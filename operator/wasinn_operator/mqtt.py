"""Propeller's MQTT conventions: settings, topics, and a publisher that retries.

Settings come from `PROPLET_*` environment variables, with `config.toml`'s `[proplet]` section
(domain_id, channel_id, client_id, client_key) as the fallback Propeller uses. Every topic is
under `m/{domain_id}/c/{channel_id}/`; the username is the client id and the password its key.
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

    def topic(self, suffix: str) -> str:
        """`m/{domain}/c/{channel}/{suffix}`."""
        return f"m/{self.domain_id}/c/{self.channel_id}/{suffix}"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], config_file: Path | None = Path("config.toml")
    ) -> MQTTSettings | None:
        """Settings if the environment (or config.toml) names a broker channel, else None."""
        section: dict[str, Any] = {}
        if config_file is not None and config_file.is_file():
            try:
                section = tomllib.loads(config_file.read_text()).get("proplet", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise MQTTError(f"{config_file}: {exc}") from None

        def get(name: str, default: str = "") -> str:
            return environ.get(f"PROPLET_{name.upper()}") or str(section.get(name, default))

        domain, channel = get("domain_id"), get("channel_id")
        if not (domain and channel):
            if environ.get("PROPLET_MQTT_ADDRESS"):
                raise MQTTError("PROPLET_MQTT_ADDRESS is set but PROPLET_DOMAIN_ID or "
                                "PROPLET_CHANNEL_ID is missing")  # fmt: skip
            return None
        address = urlparse(environ.get("PROPLET_MQTT_ADDRESS") or "tcp://localhost:1883")
        if address.scheme not in ("tcp", "mqtt") or not address.hostname:
            raise MQTTError(f"PROPLET_MQTT_ADDRESS {address.geturl()!r} is not tcp://HOST:PORT")
        try:
            qos = int(environ.get("PROPLET_MQTT_QOS", "2"))
            timeout = _seconds(environ.get("PROPLET_MQTT_TIMEOUT", "30s"))
            interval = _seconds(environ.get("PROPLET_LIVELINESS_INTERVAL", "10s"))
        except ValueError as exc:
            raise MQTTError(f"PROPLET_* setting: {exc}") from None
        if qos not in (0, 1, 2):
            raise MQTTError(f"PROPLET_MQTT_QOS {qos} is not 0, 1 or 2")
        return cls(
            host=address.hostname,
            port=address.port or 1883,
            domain_id=domain,
            channel_id=channel,
            client_id=get("client_id"),
            client_key=get("client_key"),
            qos=qos,
            timeout=timeout,
            instance_id=environ.get("PROPLET_INSTANCE_ID") or f"wasinn-{uuid.uuid4()}",
            liveliness_interval=interval,
        )


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
    """Propeller's `control/proplet/results` message."""
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
