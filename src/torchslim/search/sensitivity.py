"""Per-layer sensitivity: the metric as a function of each knob's setting, one layer at a time.

Each (knob, layer) is compressed alone and the task's metric is measured on the
validation split, either right away (``recovery_epochs=0``) or after a short recovery
(a few epochs of fine-tuning / distillation; a technique's own fine-tuning gets the
same epochs),
which predicts far better what a layer costs once the final recipe has recovered:
without it a 20 % channel cut of one layer can look like a 50-point loss.

Each point records the metric and the increase of the task's loss on the same split.
The metric of a small split moves in steps of one sample, so many settings look free
on it; the loss is continuous. :func:`drop_curve` predicts a drop from the loss,
converted to metric units by one factor fitted over all curves (:func:`loss_scale`).
With recovery, each knob's points are compared with the uncompressed baseline after the
same recovery (``curve["reference"]``), so what recovery alone wins (distillation
often lowers the val loss) is not credited to the compression. Curves are cached on disk under the cache dir,
keyed by the baseline's content hash, the grids and the split, so a second run (or
a second strategy) reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.data import default_cache_dir
from torchslim.errors import TorchslimError
from torchslim.fileio import write_text_atomic
from torchslim.progress import progress_bar
from torchslim.search.space import Space, build_recipe, knob_of, recovery_kd, recovery_step
from torchslim.techniques.base import ApplyContext, apply
from torchslim.techniques.knobs import pipeline_order

if TYPE_CHECKING:
    from torchslim.task import Task

log = logging.getLogger(__name__)

SENSITIVITY_VERSION = 4
Curves = dict[str, dict[str, dict[str, Any]]]
"""``{knob: {layer: {"x": [...], "metric": [...], "loss": [...], "reference": float}}}``."""


def model_hash(model: nn.Module) -> str:
    """sha256 of a model's state (names, shapes, values)."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_file(
    task: Task, baseline: nn.Module, space: Space, split: str, recovery: dict | None = None
) -> Path:
    """Where the curves of this baseline, grid, split (and recovery) are cached."""
    key: dict[str, Any] = {
        "version": SENSITIVITY_VERSION,
        "model": model_hash(baseline),
        "task": task.fingerprint(),
        "grids": {k: list(v) for k, v in space.grids.items()},
        "layers": space.layers,
        "split": split,
    }
    for knob in pipeline_order():  # settings of the knobs' steps the curves depend on
        key.update(knob.cache_key)
    if recovery:
        key["recovery"] = recovery
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(task.cache_dir) if task.cache_dir is not None else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in task.name)
    return root / "sensitivity" / f"{safe}-{digest}.json"


def sensitivity(
    task: Task,
    baseline: nn.Module,
    space: Space,
    split: str = "val",
    cache: bool = True,
    progress: bool = True,
    recovery_epochs: int = 0,
    recovery: str = "finetune",
    recovery_lr: float | None = None,
) -> tuple[Curves, float]:
    """Curves ``{knob: {layer: {"x", "metric", "loss", "reference"}}}`` and the baseline metric.

    ``metric`` is measured at each grid value ``x``; ``loss`` is the increase of the task
    loss over the reference; ``reference`` the reference's metric (the baseline's without
    recovery).

    Whole-model knobs get one curve under the layer ``"*"``. A setting
    that a technique refuses for a layer (e.g. an unsupported shape) is measured as the
    metric of the uncompressed model and logged.

    ``recovery_epochs`` > 0 measures each point after that many epochs of ``recovery``
    (``finetune`` / ``distill``, at ``recovery_lr``), as the final recipe would.
    """
    settings = (
        {"epochs": recovery_epochs, "kind": recovery, "lr": recovery_lr}
        | ({"kd": recovery_kd(task.train_config.optimizer)} if recovery == "distill" else {})
        if recovery_epochs > 0
        else None
    )
    path = cache_file(task, baseline, space, split, settings)
    if cache and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data["curves"], float(data["baseline_metric"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("sensitivity cache %s is unreadable; measuring again", path)
    base_metric = task.evaluate(baseline, split)
    base_loss = split_loss(task, baseline, split)
    curves: Curves = {}
    references: dict[str, tuple[float, float]] = {}
    total = sum(len(space.grids[knob]) for knob, _ in space.knobs())
    with progress_bar("sensitivity", total=total, enabled=progress) as bar:
        for knob, layer in space.knobs():
            if knob not in references:
                references[knob] = _reference(
                    task, baseline, knob, (base_metric, base_loss), split, settings
                )
            reference = references[knob]
            xs, metrics, losses = [], [], []
            for value in space.grids[knob]:
                xs.append(float(value))
                metric, loss = _measure_one(
                    task, baseline, knob, layer, value, reference, split, settings
                )
                metrics.append(metric)
                losses.append(round(loss - reference[1], 6))
                bar.advance()
            curves.setdefault(knob, {})[layer] = {
                "x": xs,
                "metric": metrics,
                "loss": losses,
                "reference": reference[0],
            }
    if cache:
        payload = {"baseline_metric": base_metric, "split": split, "curves": curves}
        write_text_atomic(path, json.dumps(payload))
    return curves, base_metric


def _reference(
    task: Task,
    baseline: nn.Module,
    knob: str,
    base: tuple[float, float],
    split: str,
    settings: dict[str, Any] | None,
) -> tuple[float, float]:
    """(metric, loss) of the uncompressed baseline after the recovery ``knob``'s points get
    (``Knob.reference``: its own, none, or by default the recipe's recovery step)."""
    if not settings:
        return base
    epochs = settings["epochs"]
    reference = knob_of(knob).reference
    if reference is not None:
        step: Any = reference(epochs)
        if step is None:
            return base
    else:
        step = recovery_step(settings["kind"], epochs, settings["lr"], settings.get("kd"))
    with torch.random.fork_rng(devices=[]):
        model = apply(baseline, step, task, context=ApplyContext(task=task, teacher=baseline))
    return task.evaluate(model, split), split_loss(task, model, split)


def _measure_one(
    task: Task,
    baseline: nn.Module,
    knob: str,
    layer: str,
    value: float,
    base: tuple[float, float],
    split: str,
    settings: dict[str, Any] | None = None,
) -> tuple[float, float]:
    identity = knob_of(knob).identity
    if identity is not None and value == identity:
        return base
    if settings:
        recipe = build_recipe(
            {knob: {layer: value}},
            recovery_epochs=settings["epochs"],
            tuning_epochs=settings["epochs"],
            recovery=settings["kind"],
            recovery_lr=settings["lr"],
            kd=settings.get("kd"),
        )
    else:
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
    return task.evaluate(model, split), split_loss(task, model, split)


@torch.no_grad()
def split_loss(task: Task, model: nn.Module, split: str) -> float:
    """Mean task loss of ``model`` over one split (model left in its original mode)."""
    from torchslim.batches import batch_size_of, call_model, split_batch
    from torchslim.device import on_device, to_device

    mode = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with on_device(model, task.device):
            for batch in task.loader(split):
                inputs, target = split_batch(to_device(batch, task.device))
                if target is None:
                    return 0.0
                size = batch_size_of(inputs)
                total += float(task.loss(call_model(model, inputs), target)) * size
                count += size
    except Exception as exc:  # noqa: BLE001 - a custom loss / metric the loss cannot follow
        log.info("sensitivity: the loss is not measurable on %s (%s); metric only", split, exc)
        return 0.0
    finally:
        model.train(mode)
    return total / max(1, count)


def loss_scale(curves: Curves, base_metric: float) -> float | None:
    """Metric units per unit of loss increase, fitted over every measured point.

    Least squares through the origin of the metric drop on the loss increase; None when
    the curves have no loss (old caches) or no point moved either.
    """
    num = den = 0.0
    for per_layer in curves.values():
        for curve in per_layer.values():
            if "loss" not in curve:
                return None
            reference = curve.get("reference", base_metric)
            for metric, loss in zip(curve["metric"], curve["loss"], strict=False):
                drop, rise = max(0.0, reference - metric), max(0.0, loss)
                num += drop * rise
                den += rise * rise
    if den <= 0 or num <= 0:
        return None
    return num / den


def drop_curve(
    curve: dict[str, Any], base_metric: float, scale: float | None = None
) -> list[float]:
    """Predicted drop per grid point: non-negative and non-decreasing along the grid.

    With ``scale`` (see :func:`loss_scale`) and a loss curve, the drop is the loss
    increase times ``scale``; otherwise the metric drop.
    """
    if scale is not None and "loss" in curve:
        values = [scale * loss for loss in curve["loss"]]
    else:
        reference = curve.get("reference", base_metric)
        values = [reference - metric for metric in curve["metric"]]
    drops, worst = [], 0.0
    for value in values:
        worst = max(worst, value, 0.0)
        drops.append(worst)
    return drops
