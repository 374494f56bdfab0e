"""The operator's Node cache: what it keeps of a Node, when a change is worth a resync, and how
a listing refreshes it without undoing what the watch said since."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from wasinn_operator.controller import OperatorSettings
from wasinn_operator.controller.nodecache import NodeCache, slim_node
from wasinn_operator.controller.nodes import explain_shortfall

from .test_controller_nodes import AMX, GPU, OPENVINO, needs, node

pytestmark = pytest.mark.unit


def full(base: dict[str, Any], heartbeat: str = "2026-12-07T00:00:00Z") -> dict[str, Any]:
    """A Node as the API server sends it: images, addresses, heartbeats, managed fields."""
    node = copy.deepcopy(base)
    node["metadata"] |= {
        "uid": "u-" + node["metadata"]["name"],
        "resourceVersion": "7",
        "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
    }
    node["status"]["conditions"] = [
        {**c, "lastHeartbeatTime": heartbeat, "message": "kubelet is posting ready status"}
        for c in node["status"]["conditions"]
    ] + [{"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat}]
    node["status"]["images"] = [{"names": ["registry/proplet:dev"], "sizeBytes": 1 << 30}]
    node["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.1"}]
    return node


def test_what_no_node_has_reads_the_same_from_the_kept_nodes() -> None:
    amx = {**OPENVINO, AMX: "true"}
    tainted = [{"key": "k", "effect": "NoSchedule"}]
    nodes = [
        node("plain"),
        node("ov", OPENVINO),
        node("gpu", amx, {GPU: "1"}, taints=tainted),
        node("down", OPENVINO, ready=False),
        node("cordoned", OPENVINO, cordoned=True),
    ]
    settings = OperatorSettings()
    specs: list[dict[str, Any]] = [{}, {"device": "GPU"}, {"nodeFeatures": [AMX]}]
    for spec in [*specs, {"device": "GPU", "nodeFeatures": [AMX]}]:
        req = needs(spec, settings)
        slim = [slim_node(full(n)) for n in nodes]
        assert explain_shortfall(slim, req) == explain_shortfall([full(n) for n in nodes], req)
    fits = slim_node(full(node("gpu", amx, {GPU: "1"})))
    assert explain_shortfall([fits], needs({"device": "GPU", "nodeFeatures": [AMX]})) is None


def test_only_a_change_in_what_a_node_offers_counts_as_a_change() -> None:
    cache = NodeCache()
    assert cache.put(full(node("n1", OPENVINO)))
    assert not cache.put(full(node("n1", OPENVINO), heartbeat="2026-12-07T00:00:40Z"))
    assert cache.put(full(node("n1", OPENVINO, ready=False)))
    assert cache.put(full(node("n1", {**OPENVINO, AMX: "true"}, ready=False)))
    assert cache.put(full(node("n1", {**OPENVINO, AMX: "true"}, {GPU: "2"}, ready=False)))
    assert cache.remove("n1")
    assert not cache.remove("n1")


def test_the_cache_answers_only_once_a_listing_made_it_complete() -> None:
    cache = NodeCache()
    cache.put(full(node("n1", OPENVINO)))
    assert cache.nodes() is None  # a watch event alone does not say there are no others
    cache.refresh([full(node("n1", OPENVINO)), full(node("n2"))], time.monotonic())
    assert sorted(n["metadata"]["name"] for n in cache.nodes() or []) == ["n1", "n2"]
    assert cache.nodes() == [slim_node(full(node("n1", OPENVINO))), slim_node(full(node("n2")))]


def test_a_listing_drops_nodes_gone_unseen_and_keeps_what_the_watch_said_since() -> None:
    cache = NodeCache()
    cache.put(full(node("gone")))  # deleted while the watch was away: no DELETED event
    cache.put(full(node("changed")))
    since = time.monotonic()
    time.sleep(0.001)
    cache.put(full(node("changed", OPENVINO)))  # the watch, after the listing began
    cache.put(full(node("new", OPENVINO)))  # created after the listing began
    cache.refresh([full(node("changed")), full(node("listed"))], since)
    kept = {n["metadata"]["name"]: n for n in cache.nodes() or []}
    assert sorted(kept) == ["changed", "listed", "new"]
    assert kept["changed"]["metadata"]["labels"] == OPENVINO
    assert len(cache) == 3
