"""The test control plane itself: what it runs, that it stops exactly what it started, and the
guard that fails a test whose processes wrote fields the API server dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..apiserver import ControlPlane
from .kubeapi import Cluster

pytestmark = pytest.mark.integration

WRITE_AN_UNKNOWN_FIELD = """
import sys, kubernetes
kubernetes.config.load_kube_config()
kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
    "wasinn.dev", "v1alpha1", sys.argv[1], "wasinntasks", "t1", {"status": {"bogus": 1}})
"""


def test_a_second_control_plane_stops_exactly_what_it_started(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    plane = ControlPlane(tmp_path, control_plane.bins)
    plane.start()
    processes = [c.process for c in plane.components]
    names = [c.name for c in plane.components]
    try:
        assert names == ["etcd", "kube-apiserver", "kube-controller-manager"]
        assert plane.url != control_plane.url
        namespaces = plane.request("GET", "/api/v1/namespaces")["items"]
        assert "default" in {n["metadata"]["name"] for n in namespaces}
    finally:
        plane.stop()
    assert [p.poll() is not None for p in processes] == [True] * 3
    assert not plane.components
    assert all(c.process.poll() is None for c in control_plane.components)
    assert control_plane.request("GET", "/api/v1/namespaces/default")["metadata"]["name"]


def test_the_api_servers_warnings_fail_the_test(kube: Cluster) -> None:
    kube.create("wasinntasks", {"metadata": {"name": "t1"}, "spec": {"suspend": True}})
    done = subprocess.run(
        [sys.executable, "-c", WRITE_AN_UNKNOWN_FIELD, kube.namespace],
        env=os.environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not kube.get("wasinntasks", "t1").get("status")  # dropped: not in the CRD's schema
    warnings = Path(os.environ["WASINN_API_WARNINGS"])
    assert 'unknown field \\"status.bogus\\"' in warnings.read_text()
    warnings.unlink()  # (else the fixture fails this test, as it would any other)
