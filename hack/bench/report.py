"""The benchmark's pure parts: statistics, the stdout table, the JSON document, --compare.

A result is a row: {"section", "name", "metric", "value", "unit"}; higher-is-better metrics
(requests/s, tasks/s) are marked so --compare says which way is better.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]
HIGHER_IS_BETTER = ("per_s",)
SCHEMA = 1


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, p95, p99, min and count of a sample."""
    return {
        "median": statistics.median(values) if values else math.nan,
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "n": float(len(values)),
    }


def row(section: str, name: str, metric: str, value: float, unit: str) -> Row:
    """One measured number."""
    return {"section": section, "name": name, "metric": metric, "value": value, "unit": unit}


def key(r: Row) -> str:
    return f"{r['section']}/{r['name']}/{r['metric']}"


def format_value(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(rows: Iterable[Row]) -> str:
    """A fixed-width table, one line per row, grouped by section in the order given."""
    rows = list(rows)
    widths = [
        7,
        max([4, *(len(r["name"]) for r in rows)]),
        max([6, *(len(r["metric"]) for r in rows)]),
    ]
    lines = [f"{'section':<{widths[0]}}  {'name':<{widths[1]}}  {'metric':<{widths[2]}}  "
             f"{'value':>10}  unit"]  # fmt: skip
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r['section']:<{widths[0]}}  {r['name']:<{widths[1]}}  {r['metric']:<{widths[2]}}  "
            f"{format_value(r['value']):>10}  {r['unit']}"
        )
    return "\n".join(lines)


def document(rows: Sequence[Row], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document --json writes (NaN becomes null: JSON has no NaN)."""
    clean = [{**r, "value": None if math.isnan(r["value"]) else r["value"]} for r in rows]
    return {"schema": SCHEMA, "meta": meta, "results": clean}


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(document(rows, meta), indent=1) + "\n")


def load_rows(path: Path) -> list[Row]:
    """Rows of a document written by write_json; a clear error for anything else."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a hack/bench JSON document (schema {SCHEMA})")
    return [{**r, "value": math.nan if r["value"] is None else r["value"]} for r in doc["results"]]


def compare(old: Sequence[Row], new: Sequence[Row]) -> str:
    """new/old for every metric both runs have, marking which side is better."""
    before = {key(r): r for r in old}
    lines = [f"{'metric':<60} {'old':>10} {'new':>10} {'new/old':>8}"]
    for r in new:
        o = before.get(key(r))
        if o is None or not o["value"] or math.isnan(o["value"]) or math.isnan(r["value"]):
            continue
        ratio = r["value"] / o["value"]
        higher = r["metric"].endswith(HIGHER_IS_BETTER) or r["unit"].endswith("/s")
        better = ratio > 1 if higher else ratio < 1
        mark = "" if abs(ratio - 1) < 0.05 else (" better" if better else " worse")
        lines.append(
            f"{key(r):<60} {format_value(o['value']):>10} {format_value(r['value']):>10} "
            f"{ratio:>8.3f}{mark}"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path) -> str:
    """A PNG with one panel per section; matplotlib is optional (the test extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[test]')"
    # Shares are in the table; the plot shows times, rates and sizes.
    rows = [r for r in rows if not math.isnan(r["value"]) and r["unit"] != "fraction"]
    sections = list(dict.fromkeys(r["section"] for r in rows))
    if not sections:
        return "plot skipped: no results"
    counts = [sum(r["section"] == s for r in rows) for s in sections]
    fig, axes = plt.subplots(
        len(sections),
        1,
        figsize=(8, 0.16 * sum(counts) + 0.6 * len(sections)),
        gridspec_kw={"height_ratios": counts},
    )
    for ax, section in zip(axes if len(sections) > 1 else [axes], sections, strict=True):
        chosen = [r for r in rows if r["section"] == section]
        ax.barh([f"{r['name']} {r['metric']} ({r['unit']})" for r in chosen],
                [r["value"] for r in chosen])  # fmt: skip
        ax.set_title(section, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return f"plot written to {path}"
