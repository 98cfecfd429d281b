"""What can be pruned: every prunable layer and coupled channel group, with the reason when not.

``torchslim analyze TASK`` prints this. It never fails on an unfamiliar pattern: a
model that cannot be traced still gets its per-layer table, with channel pruning marked
unavailable and the tracing error as the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import UnsupportedError
from torchslim.measure import count_macs
from torchslim.techniques.channels import (
    build_graph,
    coupled_groups,
    example_inputs,
    final_layers,
)
from torchslim.techniques.pruning import PRUNABLE

if TYPE_CHECKING:
    from torchslim.task import Task

NM_PATTERNS = ((2, 4), (4, 8))


@dataclass
class LayerReport:
    """One layer: size, cost and the techniques that apply to it."""

    name: str
    type: str
    params: int
    macs: int
    techniques: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class GroupReport:
    """One coupled channel group: the root layer, its width, every member layer."""

    root: str
    channels: int
    members: list[str]
    prunable: bool
    reason: str = ""


@dataclass
class Analysis:
    """Per-layer and per-group prunability of a model."""

    layers: list[LayerReport]
    groups: list[GroupReport]
    skipped: list[dict[str, str]]
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def analyze_model(model: nn.Module, inputs: Any = None, task: Task | None = None) -> Analysis:
    """Analyze ``model`` (not modified) on one-sample ``inputs`` (default: the task's)."""
    import copy

    model = copy.deepcopy(model).eval()
    inputs = inputs if inputs is not None else example_inputs(model, task)
    macs = count_macs(model, inputs)
    classifier = {id(m) for m in final_layers(model, inputs)}
    skipped: list[dict[str, str]] = []
    groups: list[GroupReport] = []
    grouped: set[str] = set()
    try:
        graph = build_graph(model, inputs)
        ignored = [m for m in model.modules() if id(m) in classifier]
        for info in coupled_groups(model, graph, ignored):
            groups.append(
                GroupReport(info.root, info.channels, info.members, info.prunable, info.reason)
            )
            if info.prunable:
                grouped.add(info.root)
            else:
                skipped.append({"layer": info.root, "reason": info.reason})
        graph_error = ""
    except UnsupportedError as exc:
        graph_error = str(exc)
        skipped.append({"layer": "(whole model)", "reason": graph_error})
    member_of = {m: g.root for g in groups if g.prunable for m in g.members if m != g.root}
    layers: list[LayerReport] = []
    for name, module in model.named_modules():
        if not (isinstance(module, PRUNABLE) or isinstance(module, nn.MultiheadAttention)):
            continue
        params = sum(p.numel() for p in module.parameters())
        techniques, notes = [], []
        if isinstance(module, PRUNABLE):
            techniques.append("unstructured")
            width = module.weight.shape[1]
            for n, m in NM_PATTERNS:
                if width % m == 0:
                    techniques.append(f"{n}:{m}")
            if width % 4:
                notes.append(f"no N:M (input size {width} is not a multiple of 4)")
        if id(module) in classifier:
            notes.append("classifier: channels kept")
        elif name in grouped:
            techniques.append("channels")
        elif graph_error:
            notes.append("channels: model cannot be traced")
        elif name in member_of:
            notes.append(f"channels: follows group {member_of[name]}")
        elif isinstance(module, nn.MultiheadAttention):
            notes.append("embed dim follows its group; heads: channel_pruning head_ratio")
        layers.append(
            LayerReport(
                name,
                type(module).__name__,
                params,
                macs.per_layer.get(name, 0),
                techniques,
                notes,
            )
        )
    return Analysis(layers, groups, skipped, sum(p.numel() for p in model.parameters()), macs.macs)


def analyze(task: Task, model: nn.Module | None = None) -> Analysis:
    """Analyze a task's model (its cached baseline if trained, else a fresh build)."""
    if model is None:
        model = task.build_model()
    return analyze_model(model, task.inputs(1), task)


def analysis_tables(analysis: Analysis, title: str) -> list[Any]:
    """Rich tables: layers, coupled groups, skipped items."""
    from rich.table import Table

    layers = Table(title=f"{title}: layers ({analysis.params:,} params, {analysis.macs:,} MACs)")
    for column in ("layer", "type", "params", "MACs", "techniques", "notes"):
        layers.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for row in analysis.layers:
        layers.add_row(
            row.name,
            row.type,
            f"{row.params:,}",
            f"{row.macs:,}",
            ", ".join(row.techniques),
            "; ".join(row.notes),
        )
    groups = Table(title="coupled channel groups (pruned together)")
    for column in ("root", "channels", "members", "prunable"):
        groups.add_column(column)
    for group in analysis.groups:
        members = ", ".join(group.members[:6]) + (" ..." if len(group.members) > 6 else "")
        groups.add_row(
            group.root,
            str(group.channels),
            members,
            "yes" + (f" ({group.reason})" if group.reason else "")
            if group.prunable
            else f"no: {group.reason}",
        )
    tables = [layers, groups]
    if analysis.skipped:
        skipped = Table(title="skipped")
        skipped.add_column("layer")
        skipped.add_column("reason")
        for item in analysis.skipped:
            skipped.add_row(item["layer"], item["reason"])
        tables.append(skipped)
    return tables
