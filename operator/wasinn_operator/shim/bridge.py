"""MQTT: the results outbox, and the shim as a Propeller proplet.

Outbox: a finished run is recorded in the task store as unpublished; this loop publishes it to
`control/proplet/results` and marks it only after the broker's PUBACK/PUBCOMP, so a result
produced while the broker is down (or lost in flight) is sent after it returns: at least once.

Proplet mode: `control/proplet/create` once (with metadata), `control/proplet/alive` every
interval with an offline last will, `control/proplet/metrics` every metrics interval, tasks from
`control/manager/start` (those addressed to this proplet) run as tasks whose id is the
manager's, `control/manager/stop` ends them (Failed, published as their result); latent tasks
wait for `control/manager/invoke` (see `invoke.py`); an `image_url` without a `file` is fetched
over http(s) directly, or else with the registry chunk protocol. paho reconnects with backoff
(1 s to 30 s).

Manager mode (`dispatch.py`): proplets announcing themselves on the channel
(`control/proplet/create`, `control/proplet/alive`; an `offline` last will is no heartbeat)
join the proplet registry, their `control/proplet/metrics` are kept, and their results on
`control/proplet/results` end the runs dispatched to them (their `task_metrics` are kept); a
run whose proplet stops heartbeating fails. The shim's own messages coming back on the
channel are ignored.

Threads: paho's network thread only parses and queues (it never touches the store: a store
call there can block the acknowledgements other threads wait for); manager messages run on
the manager thread, proplets' messages on the dispatch thread (which also sweeps for dead
proplets every second), results and task metrics go out on the outbox thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from ..api.propeller import InvokeMessage, StartMessage, StopMessage, TaskInput
from ..mqtt import RESULTS_TOPIC, MQTTSettings, results_payload
from . import httpfetch
from .announce import (
    ALIVE_TOPIC,
    CREATE_TOPIC,
    METRICS_TOPIC,
    TASK_METRICS_TOPIC,
    ProcessSampler,
    alive_message,
    create_message,
    task_metrics_message,
)
from .dispatch import MAX_TEXT, START_TOPIC, STOP_TOPIC, proplet_metadata
from .errors import BadRequestError, ConflictError, NotFoundError, ShimError
from .invoke import INVOKE_RESULTS_TOPIC, Invoker
from .jsonbody import parse_json
from .registry import CHUNKS_TOPIC, REQUEST_TOPIC, RegistryError, RegistryFetcher
from .service import TaskService

INVOKE_TOPIC = "control/manager/invoke"
REGISTRY_TIMEOUT = 60.0
SWEEP_SECONDS = 1.0
MAX_PROPLETS = 1000  # external proplets held; anyone on the channel can announce one
MAX_METRICS_BYTES = 64 << 10  # one proplet metrics message, as JSON
# What proplets send a manager.
PROPLET_TOPICS = (CREATE_TOPIC, ALIVE_TOPIC, METRICS_TOPIC, RESULTS_TOPIC, TASK_METRICS_TOPIC)
log = logging.getLogger("wasinn.shim.mqtt")


class Bridge:
    """One MQTT connection for the outbox and, in proplet mode, the proplet protocol."""

    def __init__(
        self,
        settings: MQTTSettings,
        service: TaskService,
        *,
        proplet: bool = True,
        registry: CollectorRegistry | None = None,
        models_dir: Path | None = None,
        invoker: Invoker | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.proplet = proplet
        self.namespace = settings.namespace
        self._sampler = ProcessSampler()
        self.invoker = invoker or Invoker(service, models_dir)
        self.id = settings.instance_id
        self.fetcher = RegistryFetcher(
            lambda body: self._publish(REQUEST_TOPIC, body), service.artifacts.max_bytes
        )
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._announced = False
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._reports: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.dispatcher = service.dispatcher
        if self.dispatcher is not None:
            self.dispatcher.connect(self._publish)
        self._published = Counter(
            "wasinn_shim_results_published", "Results the broker acked", registry=registry
        )
        self._up = Gauge(
            "wasinn_shim_mqtt_connected", "1 while connected to the broker", registry=registry
        )
        self.client = self._client()
        self._threads = [threading.Thread(target=self._outbox, name="wasinn-outbox", daemon=True)]
        if self.dispatcher is not None:
            self._threads.append(
                threading.Thread(target=self._manage, name="wasinn-dispatch", daemon=True)
            )
        if proplet:
            self._threads += [
                threading.Thread(target=self._heartbeat, name="wasinn-alive", daemon=True),
                threading.Thread(target=self._metrics, name="wasinn-metrics", daemon=True),
                threading.Thread(target=self._run_jobs, name="wasinn-manager", daemon=True),
            ]

    def _client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True)
        if self.settings.client_id:
            client.username_pw_set(self.settings.client_id, self.settings.client_key)
        if self.proplet:
            will = {"status": "offline", "proplet_id": self.id, "namespace": self.namespace}
            client.will_set(self.settings.topic(ALIVE_TOPIC), json.dumps(will), self.settings.qos)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers) and start the loops."""
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Disconnect and stop the loops."""
        self._stopping.set()
        self._jobs.put(None)
        self._reports.put(None)
        self.client.disconnect()
        self.client.loop_stop()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected.is_set()

    def problem(self) -> str | None:
        """For /health: None while connected, else which broker is unreachable."""
        if self._connected.is_set():
            return None
        where = f"{self.settings.host}:{self.settings.port}"
        return f"not connected to the MQTT broker at {where} (results wait in the outbox)"

    # paho callbacks (paho's network thread: never block here).
    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, code: Any, _p: object
    ) -> None:
        if code.is_failure:
            log.warning("MQTT connection refused: %s", code)
            return
        log.info("MQTT connected to %s:%s", self.settings.host, self.settings.port)
        self._connected.set()
        self._up.set(1)
        if self.dispatcher is not None:
            for suffix in PROPLET_TOPICS:
                client.subscribe(self.settings.topic(suffix), qos=self.settings.qos)
        if self.proplet:
            for suffix in (START_TOPIC, STOP_TOPIC, INVOKE_TOPIC, CHUNKS_TOPIC):
                client.subscribe(self.settings.topic(suffix), qos=self.settings.qos)
            if not self._announced:
                self._announced = True
                self._send(CREATE_TOPIC, create_message(self.id, self.namespace))
            self._send(ALIVE_TOPIC, self._alive())

    def _on_disconnect(self, _c: object, _u: object, _f: object, code: Any, _p: object) -> None:
        self._connected.clear()
        self._up.set(0)
        if not self._stopping.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", code)

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        try:
            payload = parse_json(message.payload)
            if not isinstance(payload, dict):
                raise BadRequestError("not a JSON object")
        except BadRequestError as exc:
            log.warning("ignoring a malformed message on %s: %s", message.topic, exc)
            return
        if message.topic == self.settings.topic(CHUNKS_TOPIC):
            self.fetcher.on_chunk(payload)
        elif message.topic == self.settings.topic(START_TOPIC):
            self._jobs.put(lambda: self._start(payload))
        elif message.topic == self.settings.topic(STOP_TOPIC):
            self._jobs.put(lambda: self._stop(payload))
        elif message.topic == self.settings.topic(INVOKE_TOPIC):
            self._jobs.put(lambda: self._invoke(payload))
        elif self.dispatcher is not None:
            for suffix in PROPLET_TOPICS:
                if message.topic == self.settings.topic(suffix):
                    self._reports.put((suffix, payload))

    # Loops.
    def _outbox(self) -> None:
        while not self._stopping.is_set():
            if self._connected.wait(1.0):
                try:
                    sent = self._send_results()
                except ShimError as exc:  # the store fails (a full disk): try again later
                    log.warning("MQTT outbox: %s", exc)
                    sent = 0
                if not sent:
                    self.service.store.wait_for_results(1.0)

    def _send_results(self) -> int:
        """Publish the waiting results (a batch of them); how many were acknowledged."""
        store, sent = self.service.store, 0
        for record in store.unpublished():
            # On MQTT the shim is the proplet (it announced itself and heartbeats); the
            # backend's worker that REST names in `proplet_id` (a node, in kubernetes mode) is
            # unknown to a Propeller manager.
            payload = results_payload(record.id, self.id, record.results, record.error or None)
            if self._stopping.is_set() or not self._publish(RESULTS_TOPIC, payload):
                return 0  # disconnected or refused: wait before the next try
            store.mark_published(record.id, record.run)
            self._published.inc()
            sent += 1
            if self.proplet:
                metrics = task_metrics_message(
                    record.id, self.id, record.start_time, record.finish_time
                )
                self._send(TASK_METRICS_TOPIC, metrics)
        return sent

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.settings.liveliness_interval):
            if self._connected.is_set():
                self._send(ALIVE_TOPIC, self._alive())

    def _metrics(self) -> None:
        while not self._stopping.wait(self.settings.metrics_interval):
            if self._connected.is_set():
                self._send(METRICS_TOPIC, self._sampler.metrics_message(self.id, self.namespace))

    def _manage(self) -> None:
        """Proplets' messages, in order, and the liveness sweep of dispatched runs."""
        assert self.dispatcher is not None
        swept = time.monotonic()
        while True:
            try:
                report = self._reports.get(timeout=SWEEP_SECONDS)
            except queue.Empty:
                report = ("", {})
            if report is None:
                return
            try:
                if report[0]:
                    self._report(*report)
                if time.monotonic() - swept >= SWEEP_SECONDS:
                    swept = time.monotonic()
                    self.dispatcher.sweep()
            except Exception:  # one bad message must not end the dispatch loop
                log.exception("handling a proplet message failed")

    def _report(self, suffix: str, payload: dict[str, Any]) -> None:
        assert self.dispatcher is not None
        if suffix == RESULTS_TOPIC:
            self.dispatcher.on_result(payload)
            return
        if suffix == TASK_METRICS_TOPIC:
            if len(json.dumps(payload)) <= MAX_METRICS_BYTES:
                self.dispatcher.on_task_metrics(payload)
            return
        proplet_id = payload.get("proplet_id")
        if not isinstance(proplet_id, str) or not 0 < len(proplet_id) <= MAX_TEXT:
            log.warning("ignoring a %s message without a usable proplet_id", suffix)
            return
        registry = self.service.registry
        known = proplet_id == self.id or registry.is_external(proplet_id)
        if suffix == METRICS_TOPIC:
            if known and len(json.dumps(payload)) <= MAX_METRICS_BYTES:
                registry.record_metrics(proplet_id, payload)
        elif proplet_id == self.id:
            return  # the shim's own announcement: it is listed as the backend's proplet
        elif not known and len(registry.external()) >= MAX_PROPLETS:
            log.warning("ignoring proplet %s: %d external proplets known", proplet_id, MAX_PROPLETS)
        elif suffix == CREATE_TOPIC:
            registry.register(
                proplet_id,
                namespace=str(payload.get("namespace") or "")[:MAX_TEXT],
                metadata=proplet_metadata(payload.get("metadata")),
            )
        elif payload.get("status") != "offline":  # a last will is the end of heartbeats
            registry.heartbeat(proplet_id, str(payload.get("namespace") or "")[:MAX_TEXT])

    def _run_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # one bad message must not end the manager loop
                log.exception("handling a manager message failed")

    # Manager messages.
    def _start(self, payload: Mapping[str, Any]) -> None:
        try:
            message = StartMessage.model_validate(payload)
        except ValidationError as exc:
            log.warning("ignoring an invalid start message: %s", exc)
            return
        if not message.addressed_to(self.id) or self._dispatched(message.id):
            return
        if self.service.refuse_start(message.id, _body(message)):
            return  # refused by the policy (recorded Failed, published): fetch and run nothing
        if not message.file and message.image_url:
            # Waiting for chunks must not hold up stop messages: fetch in a thread of its own.
            threading.Thread(target=self._fetch_and_run, args=(message,), daemon=True).start()
            return
        self._accept(message, message.wasm_bytes())

    def _fetch_and_run(self, message: StartMessage) -> None:
        url = message.image_url
        assert url is not None
        try:
            if httpfetch.is_http_url(url):
                wasm = httpfetch.fetch(url, self.service.artifacts.max_bytes)
            else:
                wasm = self.fetcher.fetch(url, REGISTRY_TIMEOUT)
        except httpfetch.FetchError as exc:
            self._accept(message, None, f"fetching image_url: {exc}")
            return
        except RegistryError as exc:
            self._accept(message, None, f"fetching image_url through the registry: {exc}")
            return
        self._accept(message, wasm)

    def _accept(self, message: StartMessage, wasm: bytes | None, error: str | None = None) -> None:
        body = _body(message)
        latent = message.latent and error is None
        try:
            self.service.accept(message.id, body, wasm, error, run=not latent)
        except ShimError as exc:
            self.service.accept(message.id, body, None, str(exc))
            return
        if latent:
            self.invoker.deployed(message.id)

    def _invoke(self, payload: Mapping[str, Any]) -> None:
        try:
            message = InvokeMessage.model_validate(payload)
        except ValidationError as exc:
            log.warning("ignoring an invalid invoke message: %s", exc)
            return
        if message.addressed_to(self.id):
            # Its own thread: an invocation runs a module, which must not hold up a stop.
            threading.Thread(target=self._answer, args=(message,), daemon=True).start()

    def _answer(self, message: InvokeMessage) -> None:
        answer = self.invoker.invoke(message, self.id)
        if not self._publish(INVOKE_RESULTS_TOPIC, answer):
            log.warning("invoke %s: the result was not acknowledged", message.id)

    def _stop(self, payload: Mapping[str, Any]) -> None:
        try:
            message = StopMessage.model_validate(payload)
        except ValidationError as exc:
            log.warning("ignoring an invalid stop message: %s", exc)
            return
        if not message.addressed_to(self.id) or self._dispatched(message.id):
            return
        if self.invoker.forget(message.id):
            return  # a latent task: no run to end (and, as in Propeller, no result)
        try:
            self.service.stop(message.id)
        except (NotFoundError, ConflictError) as exc:
            log.info("stop %s: %s", message.id, exc)

    def _dispatched(self, task_id: str) -> bool:
        """A start or stop this shim sent its proplets, heard on its own channel."""
        return self.dispatcher is not None and self.dispatcher.owns(task_id)

    # Publishing.
    def _alive(self) -> dict[str, str]:
        return alive_message(self.id, self.namespace)

    def _send(self, suffix: str, body: Mapping[str, Any]) -> None:
        """Fire and forget (announcements; losing one is harmless)."""
        self.client.publish(self.settings.topic(suffix), json.dumps(body), qos=self.settings.qos)

    def _publish(self, suffix: str, body: Mapping[str, Any]) -> bool:
        """Publish and wait for the broker's acknowledgement; False if it did not come."""
        info = self.client.publish(
            self.settings.topic(suffix), json.dumps(body), qos=self.settings.qos
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        deadline = time.monotonic() + self.settings.timeout
        while time.monotonic() < deadline and self._connected.is_set():
            try:
                info.wait_for_publish(0.25)
            except (RuntimeError, ValueError):
                return False
            if info.is_published():
                return True
        return info.is_published()


def _body(message: StartMessage) -> TaskInput:
    """The task fields of a start message (its module travels separately; `proplet_id` and
    `broadcast` address the message, they are not the task's own)."""
    addressing = {"file", "proplet_id", "broadcast"}
    return TaskInput.model_validate(message.model_dump(exclude=addressing, exclude_unset=True))
