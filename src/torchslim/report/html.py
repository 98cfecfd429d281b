"""A self-contained HTML report: the comparison table and matplotlib plots as inline PNGs.

No network is needed to view it: styles are inline and images are base64 data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from torchslim.report.table import human_bytes, human_count, table_rows  # noqa: E402

if TYPE_CHECKING:
    from torchslim.report.results import Report

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem}th,td{padding:.3rem .6rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}tr.best{background:#e8f6e8;font-weight:600}
tr.over{color:#999}.note{color:#555;font-size:.85rem}img{max-width:100%}
.sim{color:#b35900;font-size:.8rem}tr.gap td:first-child,p.gap{color:#b00020;font-weight:600}
"""


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(figure: Any, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_png(figure)}">'


def pareto_plots(report: Report) -> str:
    """Metric against artifact bytes and against batch-1 latency (log x), front highlighted."""
    points = [("baseline", report.baseline, False)] + [
        (c.name, c.footprint, c.name in report.pareto) for c in report.candidates
    ]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (label, getter) in zip(
        axes,
        [
            ("artifact bytes", lambda fp: fp.artifact_bytes),
            ("batch-1 latency (ms)", lambda fp: fp.latency_ms.get("batch_1", float("nan"))),
        ],
        strict=True,
    ):
        for name, fp, on_front in points:
            x = getter(fp)
            if x is None or not math.isfinite(x) or x <= 0:
                continue
            color = "tab:red" if name == "baseline" else ("tab:green" if on_front else "tab:blue")
            marker = "o" if not fp.simulated else "^"
            axis.scatter([x], [fp.metric], c=color, marker=marker, s=40)
            axis.annotate(
                name, (x, fp.metric), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if report.budget:
            floor = report.baseline.metric - report.budget["max_drop"] * (
                report.baseline.metric if report.budget.get("drop_type") == "relative" else 1
            )
            axis.axhline(floor, color="gray", linestyle="--", linewidth=1, label="budget")
            axis.legend(fontsize=7)
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel(report.metric_name)
        axis.grid(alpha=0.3)
    figure.suptitle("metric vs cost (green: Pareto front, triangles: simulated)", fontsize=10)
    return _img(figure, "Pareto front")


def layer_plots(report: Report) -> str:
    """Per-layer charts: density (non-zero share), kept parameters, and any per-layer notes."""
    baseline = {row.name: row for row in report.baseline.per_layer}
    blocks = []
    for candidate in report.candidates:
        rows = candidate.footprint.per_layer
        names = [r.name for r in rows if r.params]
        if not names:
            continue
        by_name = {r.name: r for r in rows}
        density = [by_name[n].nonzero_params / max(by_name[n].params, 1) for n in names]
        kept = [
            by_name[n].params / baseline[n].params if n in baseline and baseline[n].params else 1.0
            for n in names
        ]
        series = {"non-zero share": density, "params kept vs baseline": kept}
        for key in sorted({k for v in candidate.layers.values() for k in v}):
            series[key] = [float(candidate.layers.get(n, {}).get(key, float("nan"))) for n in names]
        if (
            all(abs(d - 1) < 1e-9 for d in density)
            and all(abs(k - 1) < 1e-9 for k in kept)
            and len(series) == 2
        ):
            continue
        figure, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
        for axis, (title, values) in zip(axes[0], series.items(), strict=True):
            axis.bar(range(len(names)), values, color="tab:blue")
            axis.set_xticks(range(len(names)), names, rotation=60, fontsize=6, ha="right")
            axis.set_title(title, fontsize=9)
            axis.grid(axis="y", alpha=0.3)
        figure.suptitle(candidate.name, fontsize=10)
        blocks.append(_img(figure, f"per-layer {candidate.name}"))
    return "\n".join(blocks) or '<p class="note">No per-layer changes to show.</p>'


def history_plot(report: Report) -> str:
    """The metric after each recipe step, one line per candidate with a history."""
    with_history = [c for c in report.candidates if len(c.history) > 1]
    if not with_history:
        return '<p class="note">No multi-step recipes in this report.</p>'
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for candidate in with_history:
        steps = ["baseline"] + [str(h.get("step", i + 1)) for i, h in enumerate(candidate.history)]
        values = [report.baseline.metric] + [h["metric"] for h in candidate.history]
        axis.plot(range(len(values)), values, marker="o", label=candidate.name)
        axis.set_xticks(range(len(values)), steps, rotation=30, fontsize=7, ha="right")
    axis.set_ylabel(report.metric_name)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _img(figure, "metric through recipe steps")


def sensitivity_plot(report: Report) -> str:
    """Sensitivity curves: metric against the setting (ratio / bits / rank) per layer."""
    if not report.sensitivity:
        return '<p class="note">No sensitivity analysis in this run.</p>'
    blocks = []
    for technique, layers in report.sensitivity.items():
        figure, axis = plt.subplots(figsize=(7, 3.5))
        for layer, curve in layers.items():
            axis.plot(curve["x"], curve["metric"], marker=".", label=layer)
        axis.set_xlabel(technique)
        axis.set_ylabel(report.metric_name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, ncol=2)
        blocks.append(_img(figure, f"sensitivity {technique}"))
    return "\n".join(blocks)


def comparison_table(report: Report) -> str:
    """The comparison table with the same numbers as results.json and the terminal table."""
    header, rows = table_rows(report)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        classes = []
        if row["best"]:
            classes.append("best")
        if not row["within_budget"]:
            classes.append("over")
        if row.get("gap"):
            classes.append("gap")
        cells = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row["cells"])
        body.append(f'<tr class="{" ".join(classes)}">{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(report: Report) -> str:
    """The report page as a string."""
    base = report.baseline
    budget = (
        f"budget: max drop {report.budget['max_drop']} ({report.budget.get('drop_type', 'absolute')})"
        if report.budget
        else "no budget"
    )
    best = f"best within budget: <b>{html.escape(report.best)}</b>" if report.best else "best: none"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    from torchslim.hardware import describe

    machine = html.escape(describe(report.hardware))
    flagged = [c.name for c in report.candidates if report.gap_flagged(c)]
    gap_note = (
        f'<p class="gap">The deployed artifact of {html.escape(", ".join(flagged))} scores more '
        f"than {report.gap_limit():.4f} below its simulation (row marked !): trust the deployed "
        "row.</p>"
        if flagged
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>torchslim report: {html.escape(report.task)}</title>
<style>{_STYLE}</style></head><body>
<h1>torchslim report: {html.escape(report.task)}</h1>
<p>baseline {html.escape(report.metric_name)} {base.metric:.4f}, {human_count(base.params)} params,
{human_bytes(base.artifact_bytes)} artifact, {human_count(base.macs)} MACs; latency on
{html.escape(base.runtime)} ({html.escape(base.device)}) with {base.threads} thread(s), batch 1 and {base.batch_n}. {budget}; {best}.</p>
<p>measured on: {machine}</p>
<h2>Comparison</h2>
{comparison_table(report)}
{gap_note}
<p class="note">Ratios are baseline / candidate (higher is better). Rows marked "simulated" are
fake-quantized models measured in PyTorch; their deployed artifact appears on its own row.</p>
<h2>Pareto front</h2>
{pareto_plots(report)}
<h2>Per-layer</h2>
{layer_plots(report)}
<h2>Recipe steps</h2>
{history_plot(report)}
<h2>Sensitivity</h2>
{sensitivity_plot(report)}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def write_html(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the report page atomically."""
    from torchslim.fileio import write_text_atomic

    write_text_atomic(path, render_html(report))
