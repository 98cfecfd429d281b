"""Per-layer sensitivity: the metric as a function of each knob's setting, one layer at a time.

Each (knob, layer) is compressed alone, without recovery, and the task's metric is
measured on the validation split. Curves are cached on disk under the cache dir,
keyed by the baseline's content hash, the grids and the split, so a second run (or
a second strategy) reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.checkpoint import write_text_atomic
from torchslim.data import default_cache_dir
from torchslim.errors import TorchslimError
from torchslim.progress import progress_bar
from torchslim.search.space import IDENTITY, Space, build_recipe
from torchslim.techniques.base import ApplyContext, apply

log = logging.getLogger(__name__)

SENSITIVITY_VERSION = 1
Curves = dict[str, dict[str, dict[str, list[float]]]]


def model_hash(model: nn.Module) -> str:
    """sha256 of a model's state (names, shapes, values)."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_file(task: Any, baseline: nn.Module, space: Space, split: str) -> Path:
    """Where the curves of this baseline, grid and split are cached."""
    key = {
        "version": SENSITIVITY_VERSION,
        "model": model_hash(baseline),
        "task": task.fingerprint(),
        "grids": {k: list(v) for k, v in space.grids.items()},
        "layers": space.layers,
        "split": split,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(task.cache_dir) if task.cache_dir is not None else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in task.name)
    return root / "sensitivity" / f"{safe}-{digest}.json"


def sensitivity(
    task: Any,
    baseline: nn.Module,
    space: Space,
    split: str = "val",
    cache: bool = True,
    progress: bool = True,
) -> tuple[Curves, float]:
    """Curves ``{knob: {layer: {"x": [...], "metric": [...]}}}`` and the baseline metric.

    Whole-model knobs (``static_quant``) get one curve under the layer ``"*"``. A setting
    that a technique refuses for a layer (e.g. an unsupported shape) is measured as the
    metric of the uncompressed model and logged.
    """
    path = cache_file(task, baseline, space, split)
    if cache and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data["curves"], float(data["baseline_metric"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("sensitivity cache %s is unreadable; measuring again", path)
    base_metric = task.evaluate(baseline, split)
    curves: Curves = {}
    total = sum(len(space.grids[knob]) for knob, _ in space.knobs())
    with progress_bar("sensitivity", total=total, enabled=progress) as bar:
        for knob, layer in space.knobs():
            xs, metrics = [], []
            for value in space.grids[knob]:
                xs.append(float(value))
                metrics.append(_measure_one(task, baseline, knob, layer, value, base_metric, split))
                bar.advance()
            curves.setdefault(knob, {})[layer] = {"x": xs, "metric": metrics}
    if cache:
        payload = {"baseline_metric": base_metric, "split": split, "curves": curves}
        write_text_atomic(path, json.dumps(payload))
    return curves, base_metric


def _measure_one(
    task: Any, baseline: nn.Module, knob: str, layer: str, value: float, base: float, split: str
) -> float:
    if knob in IDENTITY and value == IDENTITY[knob]:
        return base
    recipe = build_recipe({knob: {layer: value}})
    model = baseline
    context = ApplyContext(task=task, teacher=baseline)
    try:
        with torch.random.fork_rng(devices=[]):
            for config in recipe.steps:
                model = apply(model, config, task, context=context)
    except TorchslimError as exc:
        log.info("sensitivity: %s=%s on %s is not applicable (%s)", knob, value, layer, exc)
        return base
    return task.evaluate(model, split)


def drop_curve(curve: dict[str, list[float]], base_metric: float) -> list[float]:
    """Predicted drop per grid point: non-negative and non-decreasing along the grid."""
    drops, worst = [], 0.0
    for metric in curve["metric"]:
        worst = max(worst, base_metric - metric, 0.0)
        drops.append(worst)
    return drops
