"""Terminal tables of footprints, rendered with rich."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from torchslim.measure import Footprint, compare

if TYPE_CHECKING:
    from torchslim.report.results import Report


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_count(count: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"


def footprint_table(
    rows: Sequence[tuple[str, Footprint]], title: str = "footprint", baseline: int | None = 0
) -> Table:
    """One row per named footprint; ratios against row ``baseline`` when there are several."""
    first = rows[0][1]
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    table.add_column(first.metric_name, justify="right")
    table.add_column("params", justify="right")
    table.add_column("non-zero", justify="right")
    table.add_column("artifact", justify="right")
    table.add_column("MACs", justify="right")
    batch_n = first.batch_n
    if first.latency_ms:
        table.add_column(f"b1 ms ({first.runtime}, {first.threads}T)", justify="right")
        table.add_column(f"b{batch_n} ms", justify="right")
    compared = baseline is not None and len(rows) > 1
    reference = baseline if baseline is not None else 0
    if compared:
        table.add_column("size x", justify="right")
        table.add_column("MACs x", justify="right")
        table.add_column("speedup b1", justify="right")
        table.add_column("drop", justify="right")
    for name, fp in rows:
        cells = [
            name + (" (simulated)" if fp.simulated else ""),
            f"{fp.metric:.4f}",
            human_count(fp.params),
            human_count(fp.nonzero_params),
            human_bytes(fp.artifact_bytes),
            human_count(fp.macs),
        ]
        if first.latency_ms:
            cells += [
                f"{fp.latency_ms.get('batch_1', float('nan')):.3f}",
                f"{fp.latency_ms.get('batch_N', float('nan')):.3f}",
            ]
        if compared:
            ratio = compare(rows[reference][1], fp)
            cells += [
                f"{ratio.size_ratio:.2f}",
                f"{ratio.macs_ratio:.2f}",
                f"{ratio.speedup.get('batch_1', float('nan')):.2f}",
                f"{ratio.metric_drop:+.4f}",
            ]
        table.add_row(*cells)
    return table


def layer_table_view(footprint: Footprint, title: str = "per layer") -> Table:
    """Per-layer parameters, non-zeros and MACs."""
    table = Table(title=title, title_justify="left")
    for column in ("layer", "type", "params", "non-zero", "MACs", "MACs %"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    total = max(footprint.macs, 1)
    for row in footprint.per_layer:
        table.add_row(
            row.name,
            row.type,
            f"{row.params:,}",
            f"{row.nonzero_params:,}",
            f"{row.macs:,}",
            f"{100 * row.macs / total:.1f}",
        )
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print a table to stdout."""
    (console or Console()).print(table)


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}{suffix}"


def table_rows(report: Report) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of the comparison table, shared by the terminal and the HTML report.

    Each row is ``{"cells": [...], "best": bool, "within_budget": bool}``; the
    numbers are those of results.json, formatted.
    """
    base = report.baseline
    on = "" if getattr(base, "device", "cpu") in ("cpu", "cpu:0") else f" on {base.device}"
    runtime = f"{base.runtime}{on}, {base.threads}T"
    header = [
        "technique",
        "params x",
        "size x",
        "MACs x",
        f"speedup b1 ({runtime})",
        f"speedup b{base.batch_n}",
        report.metric_name,
        "drop",
        "train s",
        "artifact",
    ]
    rows: list[dict[str, Any]] = [
        {
            "cells": [
                "baseline",
                "1.00",
                "1.00",
                "1.00",
                "1.00",
                "1.00",
                f"{base.metric:.4f}",
                "+0.0000",
                "-",
                human_bytes(base.artifact_bytes),
            ],
            "best": False,
            "within_budget": True,
        }
    ]
    for candidate in report.candidates:
        fp = candidate.footprint
        ratio = compare(base, fp)
        label = ("* " if candidate.name == report.best else "") + candidate.name
        label += " (simulated)" if fp.simulated else ""
        rows.append(
            {
                "cells": [
                    label,
                    _fmt(ratio.params_ratio),
                    _fmt(ratio.size_ratio),
                    _fmt(ratio.macs_ratio),
                    _fmt(ratio.speedup.get("batch_1")),
                    _fmt(ratio.speedup.get("batch_N")),
                    f"{fp.metric:.4f}",
                    f"{ratio.metric_drop:+.4f}",
                    _fmt(candidate.train_seconds, 1),
                    human_bytes(fp.artifact_bytes),
                ],
                "best": candidate.name == report.best,
                "within_budget": report.within_budget(candidate),
            }
        )
        if candidate.deployed is not None:
            deployed = candidate.deployed
            speedup = candidate.deployed_speedup()
            drop = base.metric - deployed.metric
            label = f"  deployed ({deployed.runtime})"
            if report.gap_flagged(candidate):
                label += f" ! {-(candidate.deployed_gap() or 0.0):+.4f} vs simulated"
            rows.append(
                {
                    "cells": [
                        label,
                        _fmt(compare(base, deployed).params_ratio),
                        _fmt(compare(base, deployed).size_ratio),
                        _fmt(compare(base, deployed).macs_ratio),
                        _fmt(speedup.get("batch_1")),
                        _fmt(speedup.get("batch_N")),
                        f"{deployed.metric:.4f}",
                        f"{drop:+.4f}",
                        "-",
                        human_bytes(deployed.artifact_bytes),
                    ],
                    "best": False,
                    "within_budget": report.within_budget(candidate),
                    "gap": report.gap_flagged(candidate),
                }
            )
    return header, rows


def results_table(report: Report, title: str | None = None) -> Table:
    """The comparison table for the terminal; the best row is highlighted."""
    header, rows = table_rows(report)
    table = Table(title=title or f"{report.task}: measured", title_justify="left")
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        style = "bold green" if row["best"] else ("dim" if not row["within_budget"] else None)
        table.add_row(*row["cells"], style=style)
    return table


def markdown_table(report: Report) -> str:
    """The comparison table as GitHub markdown (for READMEs and docs)."""
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [str(c) for c in row["cells"]]
        if row["best"]:
            cells[0] = f"**{cells[0].removeprefix('* ')}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
