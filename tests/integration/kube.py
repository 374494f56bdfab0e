"""kmock's Kubernetes emulator on 127.0.0.1 over real HTTP, for the operator's integration tests.

kmock (PyPI, by kopf's author) serves an in-memory Kubernetes API: discovery, storage,
list/get/watch and the finalizer/deletionTimestamp dance. Out of the box it assigns no uid,
resourceVersion, generation or creationTimestamp, ignores label/field selectors and the status
subresource's rules, has no generateName, PUT, deletecollection or garbage collection, and its
watch can miss an event written between its snapshot and its subscription.

`Emulator` keeps kmock's server, request parsing, discovery, fetching and object store, and
replaces the write path (POST/PATCH/PUT/DELETE), listing and watching with the API server's
semantics an operator depends on (see `Emulator`). `Cluster` runs it in a thread with its own
event loop, writes a kubeconfig, and offers sync helpers built on the official `kubernetes`
client over HTTP.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import datetime
import json
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp.web
import attrs
import kmock
import kopf
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes import config as k8s_config

JSON = dict[str, Any]
T = TypeVar("T")

VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})


@dataclass(frozen=True)
class ResourceSpec:
    """One served resource and the API-server rules that apply to it."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    shortnames: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    custom: bool = False  # served from a CRD: strategic-merge-patch is rejected (415)
    # On create: "keep" the status sent, "drop" it, or replace it with this initial status.
    initial_status: str | Mapping[str, Any] = "keep"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.plural}"

    @property
    def ref(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name is not None else "")

    def describe(self, name: str) -> str:
        """How the API server names an object in its messages: `pods "x"`."""
        qualified = f"{self.plural}.{self.group}" if self.group else self.plural
        return f'{qualified} "{name}"'


WASINNTASKS = ResourceSpec(
    "wasinn.dev", "v1alpha1", "wasinntasks", "WasiNNTask", "wasinntask", True,
    shortnames=("wnt",), subresources=("status",), custom=True, initial_status="drop",
)  # fmt: skip

DEFAULT_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("", "v1", "namespaces", "Namespace", "namespace", False, ("ns",), ("status",),
                 initial_status={"phase": "Active"}),
    ResourceSpec("", "v1", "pods", "Pod", "pod", True, ("po",), ("status", "log"),
                 initial_status={"phase": "Pending", "qosClass": "BestEffort"}),
    ResourceSpec("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim",
                 "persistentvolumeclaim", True, ("pvc",), ("status",),
                 initial_status={"phase": "Pending"}),
    ResourceSpec("", "v1", "nodes", "Node", "node", False, ("no",), ("status",)),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", "configmap", True, ("cm",)),
    ResourceSpec("", "v1", "events", "Event", "event", True, ("ev",)),
    ResourceSpec("events.k8s.io", "v1", "events", "Event", "event", True, ("ev",)),
    ResourceSpec("", "v1", "serviceaccounts", "ServiceAccount", "serviceaccount", True, ("sa",)),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease", "lease", True),
    ResourceSpec("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                 "CustomResourceDefinition", "customresourcedefinition", False, ("crd", "crds"),
                 ("status",)),
    WASINNTASKS,
    ResourceSpec("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering",
                 "clusterkopfpeering", False, custom=True),
    ResourceSpec("kopf.dev", "v1", "kopfpeerings", "KopfPeering", "kopfpeering", True,
                 custom=True),
)  # fmt: skip


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """An error rendered as the API server's `Status` (kubernetes.client.ApiException reads it)."""
    details = {"causes": [{"message": message}]}  # non-empty: kmock would add a traceback
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


# --- patches -------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used, as an approximation, for strategic merge patch)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JSONPatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JSONPatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise JSONPatchError(f"path {'/'.join(parts)!r} does not exist")
    return node


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    node = _container(doc, parts)
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        return node[last]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node[int(last)]
    raise JSONPatchError(f"path {'/'.join(parts)!r} does not exist")


def _remove(doc: Any, parts: list[str]) -> Any:
    _get(doc, parts)  # must exist
    node = _container(doc, parts)
    return node.pop(parts[-1] if isinstance(node, dict) else int(parts[-1]))


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    node = _container(doc, parts)
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last == "-":
        node.append(value)
    elif isinstance(node, list) and last.isdigit() and int(last) <= len(node):
        node.insert(int(last), value)
    else:
        raise JSONPatchError(f"cannot add at {'/'.join(parts)!r}")
    return doc


def json_patch(target: JSON, ops: Iterable[Any]) -> JSON:
    """RFC 6902 JSON patch; a failed `test` raises JSONPatchError (the server answers 422)."""
    doc: Any = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, Mapping) or "op" not in op or "path" not in op:
            raise JSONPatchError(f"malformed operation {op!r}")
        parts = _pointer(str(op["path"]))
        match op["op"]:
            case "add":
                doc = _add(doc, parts, copy.deepcopy(op.get("value")))
            case "remove":
                _remove(doc, parts)
            case "replace":
                _get(doc, parts)
                if parts:
                    _remove(doc, parts)
                doc = _add(doc, parts, copy.deepcopy(op.get("value")))
            case "test":
                if _get(doc, parts) != op.get("value"):
                    raise JSONPatchError(f"test failed at {op['path']!r}")
            case "move":
                value = _remove(doc, _pointer(str(op["from"])))
                doc = _add(doc, parts, value)
            case "copy":
                doc = _add(doc, parts, copy.deepcopy(_get(doc, _pointer(str(op["from"])))))
            case other:
                raise JSONPatchError(f"unknown operation {other!r}")
    if not isinstance(doc, dict):
        raise JSONPatchError("the patched document is not an object")
    return doc


# --- selectors -----------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s]*)\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


@dataclass(frozen=True)
class _Term:
    """One selector requirement: `op` is =, !=, in, notin, exists or !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, read: Callable[[str], str | None]) -> bool:
        value = read(self.key)
        match self.op:
            case "exists":
                return value is not None
            case "!exists":
                return value is None
            case "in" | "=":
                return value in self.values
            case _:  # "notin" | "!="
                return value not in self.values


def _terms(text: str | None, *, fields: bool) -> list[_Term]:
    terms = []
    for term in _split_top(text or ""):
        if not fields and (m := _SET_RE.match(term)):
            values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
            terms.append(_Term(m[1], m[2], values))
        elif m := _EQ_RE.match(term):
            terms.append(_Term(m[1], "!=" if m[2] == "!=" else "=", frozenset({m[3]})))
        elif fields:
            raise api_error(400, "BadRequest", f"invalid field selector {term!r}")
        elif term.startswith("!"):
            terms.append(_Term(term[1:].strip(), "!exists"))
        else:
            terms.append(_Term(term, "exists"))
    return terms


def label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A matcher for `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`."""
    terms = _terms(text, fields=False)
    return lambda labels: all(term.matches(labels.get) for term in terms)


def _read_path(obj: Mapping[str, Any], dotted: str) -> str:
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return "" if node is None else str(node)


def field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A matcher for `dotted.path=value`, `==` and `!=` (any path; absent fields read as "")."""
    terms = _terms(text, fields=True)
    return lambda obj: all(term.matches(lambda path: _read_path(obj, path)) for term in terms)


# --- the emulator --------------------------------------------------------------------------


@dataclass
class Fault:
    """An error to answer instead of serving a matching request (see `Cluster.fail_next`)."""

    method: str
    spec: ResourceSpec
    status: int
    times: int
    name: str | None
    message: str


def _rv(obj: Mapping[str, Any]) -> int:
    raw = obj.get("metadata", {}).get("resourceVersion")
    return int(raw) if isinstance(raw, str) and raw.isdigit() else 0


def _meta(obj: Mapping[str, Any]) -> JSON:
    meta = obj.get("metadata")
    return cast(JSON, meta) if isinstance(meta, dict) else {}


def _without(obj: Mapping[str, Any], *keys: str) -> JSON:
    return {k: v for k, v in obj.items() if k not in keys}


_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?$")
_NAMESPACES_ALIAS = "_namespaces"


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server's write semantics, selectors and a lossless watch.

    Writes (POST, PATCH, PUT, DELETE) never reach kmock's own write path:
    * create: `metadata.uid` (uuid4), `creationTimestamp`, `resourceVersion` (one counter for
      the whole server, increasing), `generation: 1`; `generateName`; the namespace from the URL
      (and the namespace must exist); 409 AlreadyExists; the status dropped or initialised for
      resources whose status belongs to the server (CRs with a status subresource, Pods, PVCs).
    * patch: merge-patch, JSON-patch (a failed `test` is 422, as kopf expects), strategic-merge
      (as merge; 415 for custom resources, as on a real server), apply-patch is 415; a
      `metadata.resourceVersion` in the patch or PUT is a precondition (409 Conflict); with a
      `status` subresource the main endpoint ignores `status` and `/status` changes only it;
      uid, name, namespace, creationTimestamp, deletionTimestamp are immutable; no finalizer can
      be added once deleting (422); a no-op write bumps nothing and emits no event; otherwise a
      new resourceVersion, `generation` + 1 when anything outside metadata and status changed.
    * delete: with finalizers, `deletionTimestamp` (+ generation) and MODIFIED; the object goes
      (DELETED) when the last finalizer is removed. A Pod bound to a node gets a MODIFIED with
      `deletionTimestamp` before its DELETED (as if the kubelet confirmed at once). Then garbage
      collection: dependents whose `ownerReferences` name no live owner are deleted the same way
      (cascading); `propagationPolicy: Orphan` removes the references instead. DELETE on a
      collection deletes what its selectors match. Preconditions (uid, resourceVersion).
    * list/watch: label and field selectors; the list's resourceVersion is the server's; a
      watch from a resourceVersion skips objects not changed since; a watch takes its bus mark
      and its snapshot atomically (kmock's own can miss a write in between); selector-filtered
      watches send ADDED/DELETED when an object starts/stops matching; `timeoutSeconds` ends
      the stream; every stream ends when the emulator stops.
    * `pods/log` serves the text set with `pod_logs`.
    """

    specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict)
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    faults: list[Fault] = attrs.field(factory=list)
    faults_lock: threading.Lock = attrs.field(factory=threading.Lock)
    _last_rv: int = 0
    _state: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    _watchers: dict[str, set[asyncio.Queue[JSON]]] = attrs.field(factory=dict)
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event)

    def declare(self, spec: ResourceSpec) -> None:
        self.specs[spec.group, spec.version, spec.plural] = spec
        self.resources[spec.ref] = kmock.ResourceInfo(
            kind=spec.kind, singular=spec.singular, namespaced=spec.namespaced,
            verbs=set(VERBS), shortnames=set(spec.shortnames), subresources=set(spec.subresources),
        )  # fmt: skip

    def watching(self, spec: ResourceSpec) -> int:
        """How many watch streams of this resource are open now."""
        return len(self._watchers.get(spec.key, ()))

    def close_streams(self) -> None:
        self._closing.set()

    # -- dispatch --

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 parses `/api/v1/namespaces[/NAME]` as a namespace prefix, not the resource
        # (the collection path even fails with a 500): serve it under an alias path instead.
        if m := _NAMESPACES_PATH.match(raw_request.path):
            alias = "/".join(["/api/v1", _NAMESPACES_ALIAS, *(part for part in m.groups() if part)])
            url = raw_request.rel_url
            raw_request = raw_request.clone(rel_url=url.with_path(alias).with_query(url.query))
        return await super().__call__(raw_request)

    def _spec(self, request: kmock.Request) -> ResourceSpec | None:
        res = request.resource
        if res is None or res.plural is None:
            return None
        plural = "namespaces" if res.plural == _NAMESPACES_ALIAS else res.plural
        return self.specs.get((res.group or "", res.version or "", plural))

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        spec = self._spec(request)
        if spec is None:
            if request.resource is None or request.resource.plural is None:
                return await super()._handle(request)  # discovery, /version, non-k8s paths
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        method = str(request.method.value).upper()
        self._check_faults(method, spec, request.name)
        sub = request.subresource
        if sub is not None and sub not in spec.subresources:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        if sub == "log":
            if method != "GET":
                raise api_error(405, "MethodNotAllowed", "the log is read-only")
            return self._serve_log(spec, request)
        if method == "GET":
            return await super()._handle(request)  # list, watch, get: kmock + the overrides below
        if method == "POST" and request.name is None:
            obj, status = await self._create(spec, request), 201
        elif method in {"PATCH", "PUT"} and request.name is not None:
            obj, status = await self._update(spec, request, replace=method == "PUT"), 200
        elif method == "DELETE" and request.name is not None:
            obj, status = await self._delete_one(spec, request), 200
        elif method == "DELETE":
            obj, status = await self._delete_collection(spec, request), 200
        else:
            raise api_error(405, "MethodNotAllowed", f"{method} is not supported here")
        return aiohttp.web.json_response(obj, status=status)

    def _check_faults(self, method: str, spec: ResourceSpec, name: str | None) -> None:
        with self.faults_lock:
            for fault in self.faults:
                if fault.method == method and fault.spec == spec and fault.name in {None, name}:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    raise api_error(fault.status, "Injected", fault.message)

    def _serve_log(self, spec: ResourceSpec, request: kmock.Request) -> aiohttp.web.Response:
        namespace, name = request.namespace or "", request.name or ""
        if self._live(spec, namespace, name) is None:
            raise api_error(404, "NotFound", f"{spec.describe(name)} not found")
        return aiohttp.web.Response(text=self.pod_logs.get((namespace, name), ""))

    # -- state --

    def _live(self, spec: ResourceSpec, namespace: str | None, name: str) -> JSON | None:
        key = (spec.ref, namespace if spec.namespaced else None, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _all_live(self) -> Iterator[tuple[ResourceSpec, JSON]]:
        for (res, _, _), obj in list(self.objects.items()):
            spec = self.specs.get((res.group or "", res.version or "", res.plural or ""))
            if spec is not None and not obj.deleted:
                yield spec, obj.raw

    def _next_rv(self) -> str:
        self._last_rv += 1
        return str(self._last_rv)

    async def _publish(self, spec: ResourceSpec, kind: str, obj: JSON, old: JSON | None) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj), "old": old}
        for queue in self._watchers.get(spec.key, set()):
            queue.put_nowait(event)

    async def _store(self, spec: ResourceSpec, obj: JSON, old: JSON | None) -> None:
        meta = obj["metadata"]
        key = (spec.ref, meta.get("namespace") if spec.namespaced else None, meta["name"])
        stored = copy.deepcopy(obj)
        if key not in self.objects:
            self.objects[key] = stored
        elif self.objects[key].deleted:
            self.objects[key].create(stored)
        else:
            self.objects[key].history.append(stored)
        await self._publish(spec, "ADDED" if old is None else "MODIFIED", obj, old)

    async def _remove(self, spec: ResourceSpec, obj: JSON, orphan: bool = False) -> JSON:
        meta = obj["metadata"]
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[
            spec.ref, meta.get("namespace") if spec.namespaced else None, meta["name"]
        ].delete()
        await self._publish(spec, "DELETED", final, obj)
        await self._collect_dependents(meta["uid"], orphan=orphan)
        return final

    # -- create --

    async def _create(self, spec: ResourceSpec, request: kmock.Request) -> JSON:
        if not isinstance(request.data, Mapping):
            raise api_error(400, "BadRequest", "the body is not a JSON object")
        obj: JSON = copy.deepcopy(dict(request.data))
        meta: JSON = dict(obj.get("metadata") or {})
        async with self._state:
            if spec.namespaced:
                namespace = request.namespace
                if namespace is None:
                    raise api_error(405, "MethodNotAllowed", "create needs a namespace in the URL")
                if meta.get("namespace") not in {None, namespace}:
                    raise api_error(400, "BadRequest", "the namespace of the object does not "
                                    "match the namespace on the request")  # fmt: skip
                if self._live(NAMESPACES, None, namespace) is None:
                    raise api_error(404, "NotFound", f'namespaces "{namespace}" not found')
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise api_error(422, "Invalid", "metadata.name or generateName is required")
                alphabet = "bcdfghjklmnpqrstvwxz2456789"
                meta["name"] = prefix + "".join(random.choices(alphabet, k=5))
            name = meta["name"]
            if self._live(spec, meta.get("namespace"), name) is not None:
                raise api_error(409, "AlreadyExists", f"{spec.describe(name)} already exists")
            for transient in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(transient, None)
            meta.update(
                uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(),
                resourceVersion=self._next_rv(), generation=1,
            )  # fmt: skip
            obj.update(apiVersion=spec.api_version, kind=spec.kind, metadata=meta)
            if spec.initial_status == "drop":
                obj.pop("status", None)
            elif isinstance(spec.initial_status, Mapping):
                obj["status"] = dict(spec.initial_status)
            await self._store(spec, obj, None)
        return obj

    # -- update --

    async def _update(self, spec: ResourceSpec, request: kmock.Request, *, replace: bool) -> JSON:
        name = request.name or ""
        headers = {k.lower(): v for k, v in request.headers.items()}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        async with self._state:
            current = self._live(spec, request.namespace, name)
            if current is None:
                raise api_error(404, "NotFound", f"{spec.describe(name)} not found")
            try:
                if replace:
                    if not isinstance(request.data, Mapping):
                        raise api_error(400, "BadRequest", "the body is not a JSON object")
                    new = copy.deepcopy(dict(request.data))
                elif ctype == "application/json-patch+json":
                    new = json_patch(current, request.data or [])
                elif ctype == "application/merge-patch+json" or (
                    ctype == "application/strategic-merge-patch+json" and not spec.custom
                ):
                    new = merge_patch(current, request.data or {})
                else:
                    raise api_error(415, "UnsupportedMediaType", f"{ctype!r} is not supported")
            except JSONPatchError as e:
                raise api_error(422, "Invalid", f"the JSON patch failed: {e}") from None
            if not isinstance(new, dict):
                raise api_error(422, "Invalid", "the result is not an object")
            sent_rv = _meta(new).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise api_error(
                    409, "Conflict", f"Operation cannot be fulfilled on {spec.describe(name)}: "
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )  # fmt: skip
            if request.subresource == "status":  # only the status changes
                status = new.get("status")
                new = copy.deepcopy(_without(current, "status"))
                if status is not None:
                    new["status"] = status
            elif "status" in spec.subresources:  # the main endpoint ignores the status
                new = _without(new, "status")
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
            meta = dict(_meta(new))
            old_meta = current["metadata"]
            for fixed in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
            ):
                if fixed in old_meta:
                    meta[fixed] = old_meta[fixed]
                else:
                    meta.pop(fixed, None)
            if old_meta.get("deletionTimestamp") and not set(meta.get("finalizers") or []) <= set(
                old_meta.get("finalizers") or []
            ):
                raise api_error(422, "Invalid", "Forbidden: no new finalizers can be added if "
                                "the object is being deleted")  # fmt: skip
            new.update(apiVersion=spec.api_version, kind=spec.kind, metadata=meta)
            if new == current:
                return current  # a no-op: no new resourceVersion, no event
            if _without(new, "metadata", "status") != _without(current, "metadata", "status"):
                meta["generation"] = int(old_meta.get("generation", 0)) + 1
            meta["resourceVersion"] = self._next_rv()
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                await self._store(spec, new, current)
                return await self._remove(spec, new)
            await self._store(spec, new, current)
        return new

    # -- delete --

    def _delete_options(self, request: kmock.Request) -> JSON:
        options: JSON = dict(request.data) if isinstance(request.data, Mapping) else {}
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in request.params:
                options[key] = request.params[key]
        return options

    async def _delete_one(self, spec: ResourceSpec, request: kmock.Request) -> JSON:
        name = request.name or ""
        options = self._delete_options(request)
        async with self._state:
            current = self._live(spec, request.namespace, name)
            if current is None:
                raise api_error(404, "NotFound", f"{spec.describe(name)} not found")
            preconditions = options.get("preconditions") or {}
            for field_ in ("uid", "resourceVersion"):
                expected = preconditions.get(field_)
                if expected and expected != current["metadata"].get(field_):
                    raise api_error(409, "Conflict", f"Precondition failed: {field_} mismatch")
            return await self._delete(spec, current, options)

    async def _delete_collection(self, spec: ResourceSpec, request: kmock.Request) -> JSON:
        labels = label_selector(request.params.get("labelSelector"))
        fields = field_selector(request.params.get("fieldSelector"))
        options = self._delete_options(request)
        items = []
        async with self._state:
            for candidate_spec, obj in list(self._all_live()):
                meta = obj["metadata"]
                if candidate_spec != spec or not labels(meta.get("labels") or {}):
                    continue
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if fields(obj):
                    items.append(await self._delete(spec, obj, options))
        return {"apiVersion": "v1", "kind": f"{spec.kind}List", "items": items,
                "metadata": {"resourceVersion": str(self._last_rv)}}  # fmt: skip

    async def _delete(self, spec: ResourceSpec, current: JSON, options: Mapping[str, Any]) -> JSON:
        """Delete one live object; the caller holds the state lock."""
        orphan = options.get("propagationPolicy") == "Orphan"
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return current
        graceful = (
            spec.plural == "pods"
            and bool((current.get("spec") or {}).get("nodeName"))
            and str(options.get("gracePeriodSeconds", "30")) != "0"
        )
        if meta.get("finalizers") or graceful:
            marked = copy.deepcopy(current)
            marked["metadata"].update(
                deletionTimestamp=now_rfc3339(),
                deletionGracePeriodSeconds=0,
                generation=int(meta.get("generation", 0)) + 1,
                resourceVersion=self._next_rv(),
            )
            await self._store(spec, marked, current)
            if marked["metadata"].get("finalizers"):
                return marked
            current = marked
        return await self._remove(spec, current, orphan=orphan)

    async def _collect_dependents(self, uid: str, *, orphan: bool) -> None:
        """Garbage collection, at once: dependents of a removed owner, unless orphaned."""
        live_uids = {obj["metadata"].get("uid") for _, obj in self._all_live()}
        for spec, obj in list(self._all_live()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            current = self._live(spec, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if current is None:
                continue  # removed by an earlier step of this cascade
            if orphan:
                new = copy.deepcopy(current)
                kept = [ref for ref in refs if ref.get("uid") != uid]
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences")
                new["metadata"]["resourceVersion"] = self._next_rv()
                await self._store(spec, new, current)
            elif not any(ref.get("uid") in live_uids for ref in refs):
                await self._delete(spec, current, {})

    # -- reads --

    def _selected(self, spec: ResourceSpec, request: kmock.Request) -> Callable[[JSON], bool]:
        labels = label_selector(request.params.get("labelSelector"))
        fields = field_selector(request.params.get("fieldSelector"))

        def check(obj: JSON) -> bool:
            meta = _meta(obj)
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            if request.name is not None and meta.get("name") != request.name:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        return check

    def _listing(self, spec: ResourceSpec) -> list[JSON]:
        objs = [obj for s, obj in self._all_live() if s == spec]
        return sorted(objs, key=lambda o: (_meta(o).get("namespace") or "", _meta(o)["name"]))

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        if spec is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        check = self._selected(spec, request)
        async with self._state:
            items = [copy.deepcopy(obj) for obj in self._listing(spec) if check(obj)]
            version = str(self._last_rv)
        return {"apiVersion": spec.api_version, "kind": f"{spec.kind}List",
                "metadata": {"resourceVersion": version}, "items": items}  # fmt: skip

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""  # send the headers now, even if nothing happens
        spec = self._spec(request)
        if spec is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        check = self._selected(spec, request)
        since_raw = str(request.params.get("resourceVersion") or "0")
        since = int(since_raw) if since_raw.isdigit() else 0
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None
        queue: asyncio.Queue[JSON] = asyncio.Queue()
        async with self._state:  # atomic with the writes: no event between snapshot and queue
            self._watchers.setdefault(spec.key, set()).add(queue)
            snapshot = [copy.deepcopy(obj) for obj in self._listing(spec) if check(obj)]
        try:
            for obj in snapshot:
                if _rv(obj) > since:
                    yield {"type": "ADDED", "object": obj}
            while not self._closing.is_set():
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                getting = asyncio.ensure_future(queue.get())
                closing = asyncio.ensure_future(self._closing.wait())
                done, _ = await asyncio.wait(
                    {getting, closing}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                closing.cancel()
                if getting not in done:
                    getting.cancel()
                    break
                if (translated := self._translate(getting.result(), check)) is not None:
                    yield translated
        finally:
            self._watchers[spec.key].discard(queue)

    @staticmethod
    def _translate(event: JSON, check: Callable[[JSON], bool]) -> JSON | None:
        """What a selector-filtered watch sees of an event (objects entering/leaving it)."""
        obj, old = event["object"], event.get("old")
        now_in, was_in = check(obj), old is not None and check(old)
        kind = event["type"]
        if kind == "MODIFIED" and now_in != was_in:
            kind = "ADDED" if now_in else "DELETED"
        visible = now_in or was_in if kind == "DELETED" else now_in
        return {"type": kind, "object": obj} if visible else None


NAMESPACES = DEFAULT_RESOURCES[0]


# --- the running server and its sync helpers ------------------------------------------------


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    """An official-client ApiClient for this kubeconfig only (no global config, no proxies)."""
    configuration = k8s.Configuration(proxy="", no_proxy="*")
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return k8s.ApiClient(configuration=configuration)


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig without auth for an http:// server (JSON is valid YAML)."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                   "namespace": namespace}}],
        "current-context": "kmock",
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=2))
    return path


class Cluster:
    """The emulator running in its own thread and loop, with sync helpers over real HTTP."""

    def __init__(
        self,
        workdir: Path,
        resources: Iterable[ResourceSpec] = DEFAULT_RESOURCES,
        namespaces: Iterable[str] = ("default",),
        startup_timeout: float = 10.0,
    ) -> None:
        self.specs = tuple(resources)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._emulator: Emulator | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.unexpected: list[BaseException] = []
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(startup_timeout):
            raise RuntimeError(f"the kmock emulator did not start in {startup_timeout}s")
        if self._failure is not None:
            raise RuntimeError("the kmock emulator failed to start") from self._failure
        self.kubeconfig = write_kubeconfig(workdir / "kubeconfig", self.url)
        self.client = api_client(self.kubeconfig)
        self.core = k8s.CoreV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)
        for namespace in namespaces:
            self.create("namespaces", {"metadata": {"name": namespace}})

    # -- lifecycle --

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self._failure = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = Emulator()
        for spec in self.specs:
            emulator.declare(spec)
        async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            self._emulator = emulator
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()
            emulator.close_streams()
            await asyncio.sleep(0)  # let the open watch streams see the close
            self.unexpected = [
                e
                for e in emulator.errors
                if not isinstance(e, kmock.KubernetesError | ConnectionError)
            ]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (and end open watch streams); raises if it does not stop in time."""
        self.client.close()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the kmock emulator did not stop in {timeout}s")

    @property
    def emulator(self) -> Emulator:
        assert self._emulator is not None
        return self._emulator

    # -- resources --

    def spec(self, resource: str | ResourceSpec) -> ResourceSpec:
        """`v1/pods`, `wasinn.dev/v1alpha1/wasinntasks`, or a plural/singular/kind/short name."""
        if isinstance(resource, ResourceSpec):
            return resource
        wanted = resource.lower()
        for spec in self.specs:  # core first: `events` is v1/events
            names = {spec.key.lower(), spec.plural, spec.singular, spec.kind.lower()}
            if wanted in names | set(spec.shortnames):
                return spec
        raise KeyError(f"no resource {resource!r} is declared")

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str | None] | None = None,
        content_type: str | None = None,
        timeout: float = 30.0,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        request = self.client.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers,
            body=body,
        )  # fmt: skip
        response = self.client.call_api(*request, _request_timeout=timeout)
        response.read()  # type: ignore[no-untyped-call]
        result = self.client.response_deserialize(response, {"2XX": "object"})
        return result.data

    def _ns(self, spec: ResourceSpec, namespace: str | None) -> str | None:
        return (namespace or "default") if spec.namespaced else None

    def create(self, resource: str | ResourceSpec, body: Mapping[str, Any],
               namespace: str | None = None) -> JSON:  # fmt: skip
        spec = self.spec(resource)
        ns = self._ns(spec, namespace or (body.get("metadata") or {}).get("namespace"))
        full = {"apiVersion": spec.api_version, "kind": spec.kind, **body}
        return cast(JSON, self._call("POST", spec.path(ns), body=full))

    def get(self, resource: str | ResourceSpec, name: str, namespace: str | None = None) -> JSON:
        """The object; raises kubernetes.client.ApiException (status 404) if absent."""
        spec = self.spec(resource)
        return cast(JSON, self._call("GET", spec.path(self._ns(spec, namespace), name)))

    def find(self, resource: str | ResourceSpec, name: str,
             namespace: str | None = None) -> JSON | None:  # fmt: skip
        """The object, or None if absent."""
        try:
            return self.get(resource, name, namespace)
        except k8s.ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, resource: str | ResourceSpec, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None,
             ) -> builtins.list[JSON]:  # fmt: skip
        """Objects of one namespace, or of all namespaces (namespace=None)."""
        spec = self.spec(resource)
        query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        result = self._call("GET", spec.path(namespace if spec.namespaced else None), query=query)
        return cast(builtins.list[JSON], result["items"])

    def patch(self, resource: str | ResourceSpec, name: str, body: Any,
              namespace: str | None = None, *, subresource: str | None = None) -> JSON:  # fmt: skip
        """A merge patch (a dict) or a JSON patch (a list), on the object or a subresource."""
        spec = self.spec(resource)
        path = spec.path(self._ns(spec, namespace), name) + (
            f"/{subresource}" if subresource else ""
        )
        ctype = (
            "application/json-patch+json"
            if isinstance(body, list)
            else "application/merge-patch+json"
        )
        return cast(JSON, self._call("PATCH", path, body=body, content_type=ctype))

    def replace(self, resource: str | ResourceSpec, body: Mapping[str, Any],
                namespace: str | None = None) -> JSON:  # fmt: skip
        """PUT the whole object (its metadata.resourceVersion, if any, is a precondition)."""
        spec = self.spec(resource)
        name = body["metadata"]["name"]
        return cast(JSON, self._call("PUT", spec.path(self._ns(spec, namespace), name), body=body))

    def delete(self, resource: str | ResourceSpec, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None) -> JSON:  # fmt: skip
        """Delete (or mark for deletion, with finalizers); returns the last state."""
        spec = self.spec(resource)
        body = {"propagationPolicy": propagation_policy} if propagation_policy else {}
        return cast(
            JSON, self._call("DELETE", spec.path(self._ns(spec, namespace), name), body=body)
        )

    # -- test doubles for the rest of a cluster --

    def add_node(self, name: str, labels: Mapping[str, str] | None = None,
                 ready: bool = True) -> JSON:  # fmt: skip
        """A Node as a kubelet registers it: Ready (or NotReady + not-ready taint), addresses."""
        index = len(self.list("nodes")) + 1
        condition = (
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status"}
            if ready else
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
             "message": "container runtime network not ready"}
        )  # fmt: skip
        now = now_rfc3339()
        condition.update(lastHeartbeatTime=now, lastTransitionTime=now)
        taints = [] if ready else [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        return self.create("nodes", {
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", **(labels or {})}},
            "spec": {"taints": taints} if taints else {},
            "status": {
                "conditions": [condition],
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{index}"},
                              {"type": "Hostname", "address": name}],
                "capacity": capacity, "allocatable": capacity,
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                             "kubeletVersion": "v1.31.0", "containerRuntimeVersion": "cri-o://1.31"},
            },
        })  # fmt: skip

    def add_pvc(self, namespace: str, name: str, *, bound: bool = True,
                storage: str = "1Gi", access_mode: str = "ReadOnlyMany") -> JSON:  # fmt: skip
        """A PersistentVolumeClaim, Bound to a volume unless `bound=False` (then Pending)."""
        pvc = self.create("persistentvolumeclaims", {
            "metadata": {"name": name},
            "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": storage}}},
        }, namespace)  # fmt: skip
        if not bound:
            return pvc
        volume = f"pvc-{pvc['metadata']['uid']}"
        self.patch("persistentvolumeclaims", name, {"spec": {"volumeName": volume}}, namespace)
        status = {"phase": "Bound", "accessModes": [access_mode], "capacity": {"storage": storage}}
        return self.patch("persistentvolumeclaims", name, {"status": status}, namespace,
                          subresource="status")  # fmt: skip

    def set_pod_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        node: str | None = None,
        exit_code: int | None = None,
        termination_message: str | None = None,
        reason: str | None = None,
        *,
        unschedulable_message: str | None = None,
    ) -> JSON:
        """Play the scheduler and kubelet: write a realistic status for one phase.

        Pending without a node: PodScheduled False/Unschedulable. Pending on a node: scheduled,
        container waiting (ContainerCreating). Running: container running and Ready.
        Succeeded/Failed: container terminated with `exit_code` (default 0/1), reason
        Completed/Error, `message` = `termination_message`; `reason` goes to `status.reason`
        (e.g. DeadlineExceeded). `node` sets spec.nodeName (as the scheduler's binding would).
        """
        if phase not in {"Pending", "Running", "Succeeded", "Failed"}:
            raise ValueError(f"unknown pod phase {phase!r}")
        pod = self.get("pods", name, namespace)
        if node is not None and pod.get("spec", {}).get("nodeName") != node:
            pod = self.patch("pods", name, {"spec": {"nodeName": node}}, namespace)
        node = pod.get("spec", {}).get("nodeName")
        if node is None and phase != "Pending":
            raise ValueError(f"a {phase} pod runs on a node: pass node=")
        old = pod.get("status") or {}
        now = now_rfc3339()
        started = old.get("startTime") or now
        containers = pod.get("spec", {}).get("containers") or [{}]
        container: JSON = {
            "name": containers[0].get("name", "proplet"),
            "image": containers[0].get("image", "localhost/wasinn-proplet:dev"),
            "imageID": "", "restartCount": 0, "ready": False, "started": False,
        }  # fmt: skip
        scheduled: JSON = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
        status: JSON = {"phase": phase, "qosClass": old.get("qosClass", "BestEffort")}
        if node is None:
            scheduled.update(status="False", reason="Unschedulable", message=(
                unschedulable_message
                or "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
            ))  # fmt: skip
            status["conditions"] = [scheduled]
        else:
            status.update(startTime=started, hostIP=self._node_ip(node), podIP="10.244.0.10")
            ready = "True" if phase == "Running" else "False"
            status["conditions"] = [scheduled] + [
                {"type": t, "status": s, "lastTransitionTime": now}
                for t, s in (("Initialized", "True"), ("ContainersReady", ready), ("Ready", ready))
            ]
            container_id = f"cri-o://{uuid.uuid5(uuid.NAMESPACE_URL, namespace + '/' + name).hex}"
            if phase == "Pending":
                container["state"] = {"waiting": {"reason": "ContainerCreating"}}
            elif phase == "Running":
                container.update(ready=True, started=True, containerID=container_id)
                container["state"] = {"running": {"startedAt": started}}
            else:
                code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
                terminated: JSON = {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started, "finishedAt": now, "containerID": container_id,
                }  # fmt: skip
                if termination_message is not None:
                    terminated["message"] = termination_message
                container.update(containerID=container_id, state={"terminated": terminated})
                for condition in status["conditions"][2:]:
                    condition["reason"] = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            status["containerStatuses"] = [container]
        if reason is not None:
            status["reason"] = reason
        ops = [{"op": "add", "path": "/status", "value": status}]
        return self.patch("pods", name, ops, namespace, subresource="status")

    def _node_ip(self, node: str) -> str:
        found = self.find("nodes", node)
        for address in (found or {}).get("status", {}).get("addresses", []):
            if address.get("type") == "InternalIP":
                return str(address["address"])
        return "10.0.0.1"

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0,
                 what: str = "a condition") -> T:  # fmt: skip
        """Bounded polling (see the module's `wait_for`)."""
        return wait_for(predicate, timeout, what)

    def watchers(self, resource: str | ResourceSpec) -> int:
        """How many watch streams of the resource are open (to wait for a subscription)."""
        return self.emulator.watching(self.spec(resource))

    def set_pod_log(self, namespace: str, name: str, text: str) -> None:
        """What `GET pods/NAME/log` answers (read_namespaced_pod_log)."""
        self.emulator.pod_logs[namespace, name] = text

    def fail_next(self, method: str, resource: str | ResourceSpec, status: int, *, times: int = 1,
                  name: str | None = None, message: str = "injected") -> None:  # fmt: skip
        """Answer the next `times` METHOD requests on the resource with an error Status."""
        fault = Fault(method.upper(), self.spec(resource), status, times, name, message)
        with self.emulator.faults_lock:
            self.emulator.faults.append(fault)

    def unexpected_errors(self) -> builtins.list[BaseException]:
        """Server-side exceptions other than the API errors it answers on purpose."""
        if self._emulator is None or not self._thread.is_alive():
            return list(self.unexpected)
        errors = list(self._emulator.errors)
        return [e for e in errors if not isinstance(e, kmock.KubernetesError | ConnectionError)]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "a condition") -> T:
    """Poll until `predicate()` is truthy and return it; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.05)
        last = predicate()
    return last


@contextlib.contextmanager
def running_cluster(workdir: Path, **kwargs: Any) -> Iterator[Cluster]:
    cluster = Cluster(workdir, **kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def kopf_settings() -> kopf.OperatorSettings:
    """kopf settings for runs against the emulator: quick reconnects, bounded requests."""
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    settings.watching.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 5
    return settings


def kopf_runner(
    *paths: Path,
    namespace: str = "default",
    timeout: float = 60.0,
    settings: kopf.OperatorSettings | None = None,
) -> KopfRunner:
    """`kopf run --standalone --namespace NS --verbose PATH...` in a thread, with a fresh registry.

    KUBECONFIG must be set (the `kmock_api` fixture does) and the operator must log in with
    `kopf.login_with_kubeconfig` (an `@kopf.on.login()` handler): kopf's default login with the
    official client uses `kubernetes.config.load_kube_config()`, whose default path is read from
    KUBECONFIG when `kubernetes.config` is first imported, and it sets the client's global
    default configuration. A fresh registry per run lets the same file be loaded again.
    """
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", *map(str, paths)]
    return KopfRunner(
        args,
        registry=kopf.OperatorRegistry(),
        settings=settings or kopf_settings(),
        timeout=timeout,
    )
