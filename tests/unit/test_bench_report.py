"""hack/bench's pure parts: statistics, the table, the JSON document and --compare."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "bench"))

import report


def test_percentile_interpolates_between_ranks() -> None:
    assert report.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert report.percentile([1.0, 2.0], 50) == 1.5
    assert report.percentile([10.0, 0.0], 100) == 10.0
    assert math.isnan(report.percentile([], 99))


def test_summary() -> None:
    s = report.summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["n"]) == (2.0, 1.0, 3.0)
    assert s["p99"] == pytest.approx(2.98)


def test_table_lists_every_row() -> None:
    rows = [
        report.row("runtime", "efficientnet b1", "wasm/native", 1.0123, "ratio"),
        report.row("rest", "GET /tasks/{id}", "requests_per_s", 1234.5, "req/s"),
        report.row("local", "x", "p99", math.nan, "ms"),
    ]
    lines = report.table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert "1.012" in lines[2] and "1234" in lines[3] and lines[4].split()[-2] == "-"


def test_json_round_trip_keeps_missing_values(tmp_path: Path) -> None:
    rows = [report.row("local", "x", "p99", math.nan, "ms"), report.row("a", "b", "c", 2.0, "ms")]
    path = tmp_path / "out.json"
    report.write_json(path, rows, {"commit": "abc"})
    doc = json.loads(path.read_text())
    assert doc["schema"] == report.SCHEMA and doc["meta"] == {"commit": "abc"}
    assert doc["results"][0]["value"] is None
    again = report.load_rows(path)
    assert math.isnan(again[0]["value"]) and again[1] == rows[1]


def test_load_rows_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a hack/bench JSON document"):
        report.load_rows(path)


def test_compare_prints_ratios_and_direction() -> None:
    old = [
        report.row("runtime", "m", "wasm_median", 10.0, "ms"),
        report.row("rest", "GET", "requests_per_s", 100.0, "req/s"),
        report.row("rest", "gone", "p99", 1.0, "ms"),
    ]
    new = [
        report.row("runtime", "m", "wasm_median", 5.0, "ms"),
        report.row("rest", "GET", "requests_per_s", 50.0, "req/s"),
        report.row("rest", "new", "p99", 1.0, "ms"),
    ]
    lines = report.compare(old, new).splitlines()
    assert len(lines) == 3  # header + the two metrics both runs have
    assert "0.500 better" in lines[1]  # lower latency
    assert "0.500 worse" in lines[2]  # lower throughput


def test_cluster_section_skips_when_the_cluster_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service  # noqa: PLC0415  (after the path insert above)

    script = tmp_path / "hack" / "cluster"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho 'etcd: not running'\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(service, "ROOT", tmp_path)
    rows, skipped = service.cluster_section(tmp_path / "guest.wasm", quick=True)
    assert rows == []
    assert skipped is not None and "skipped" in skipped and "etcd: not running" in skipped


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (b"/usr/bin/python3\0/opt/venv/bin/wasinn\0operator\0--namespace\0default\0", True),
        (b"python\0-m\0wasinn_operator.cli\0operator\0", True),
        (b"python\0-m\0wasinn_operator.cli\0shim\0--port\08080\0", False),
        (b"kube-controller-manager\0--operator\0", False),
    ],
)
def test_is_operator(cmdline: bytes, expected: bool) -> None:
    import service  # noqa: PLC0415

    assert service.is_operator(cmdline) is expected
