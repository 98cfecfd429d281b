"""Distillation for transformer encoders: embeddings (cosine + MSE) or logits, plus hidden states.

The recovery step after head/FFN pruning, low-rank or quantization, and the way to train a
layer-dropped student. It runs the task's own training loop (``task.fit`` with an
objective), like :func:`torchslim.techniques.distillation.distill`, whose Hinton loss and
compatibility check it reuses; it adds what sentence encoders need:

* ``cosine_weight · (1 - cos(s, t))`` + ``mse_weight · ‖s - t‖² / ‖t‖²`` on the model outputs
  (the relative squared error is scale-free, so it matters as much for normalized
  embeddings as for raw ones); or Hinton KD on logits (``loss="logits"``);
* ``hidden_weight`` · relative MSE between each student encoder layer's output and the
  teacher layer it came from (after :mod:`torchslim.hf.layerdrop`, student layer j matches
  teacher layer ``torchslim_teacher_index``; after pruning, the same index). Padding
  tokens are left out when the batch has an ``attention_mask``.

Dropout of the student is off while distilling (``dropout=False``): the target is the
teacher's deterministic function, and dropout noise only slows matching it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import call_model, split_batch
from torchslim.errors import ConfigError, ShapeError
from torchslim.hf.structure import encoder_layers
from torchslim.task import Task, TrainResult
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)
from torchslim.techniques.distillation import check_compatible, check_kd_args, hinton_loss


def embedding_distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    cosine_weight: float = 1.0,
    mse_weight: float = 1.0,
) -> torch.Tensor:
    """``cosine_weight·mean(1 - cos) + mse_weight·mean‖s - t‖² / mean‖t‖²``."""
    if student.shape != teacher.shape:
        raise ShapeError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings "
            f"{tuple(teacher.shape)} differ; distill between models with the same outputs"
        )
    s, t = student.flatten(1).float(), teacher.detach().flatten(1).float()
    loss = torch.zeros((), dtype=s.dtype, device=s.device)
    if cosine_weight:
        loss = loss + cosine_weight * (1 - F.cosine_similarity(s, t, dim=1)).mean()
    if mse_weight:
        rel = (s - t).pow(2).sum(1).mean() / t.pow(2).sum(1).mean().clamp_min(1e-12)
        loss = loss + mse_weight * rel
    return loss


class _LayerOutputs:
    """Forward hooks keeping the output of every encoder layer of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = encoder_layers(model)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = [
            enc.layer.register_forward_hook(self._hook(i)) for i, enc in enumerate(self.layers)
        ]

    def _hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[index] = output if isinstance(output, torch.Tensor) else output[0]

        return hook

    def teacher_indices(self) -> list[int]:
        return [int(getattr(e.layer, "torchslim_teacher_index", e.index)) for e in self.layers]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _hidden_loss(student: _LayerOutputs, teacher: _LayerOutputs, inputs: Any) -> torch.Tensor:
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    found = [o for o in student.outputs if o is not None]
    total = torch.zeros((), device=found[0].device if found else None)
    pairs = list(zip(student.outputs, student.teacher_indices(), strict=True))
    for s_out, t_index in pairs:
        t_out = teacher.outputs[t_index]
        if s_out is None or t_out is None:
            continue
        diff = (s_out.float() - t_out.detach().float()).pow(2).sum(-1)
        ref = t_out.detach().float().pow(2).sum(-1)
        if mask is not None and mask.shape == diff.shape:
            weight = mask.to(diff.dtype)
            total = total + (diff * weight).sum() / (ref * weight).sum().clamp_min(1e-12)
        else:
            total = total + diff.mean() / ref.mean().clamp_min(1e-12)
    return total / max(1, len(pairs))


def distill_encoder(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    loss: str = "embedding",
    cosine_weight: float = 1.0,
    mse_weight: float = 1.0,
    hidden_weight: float = 0.0,
    temperature: float = 4.0,
    alpha: float = 0.7,
    dropout: bool = False,
    freeze_embeddings: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Train ``student`` in place to match ``teacher`` on the task's train split.

    Args:
        student: the compressed model (modified in place).
        teacher: the original model; frozen and never modified.
        task: data (dict batches), optimizer, schedule and seed (``task.fit``).
        epochs, lr: overrides of the task's train config.
        loss: ``"embedding"`` (cosine + relative MSE) or ``"logits"`` (Hinton KD).
        cosine_weight, mse_weight: weights of the embedding terms (>= 0, not both 0).
        hidden_weight: weight of the per-layer hidden-state term (>= 0).
        temperature, alpha: Hinton KD settings for ``loss="logits"``.
        dropout: keep the student's dropout on while training.
        freeze_embeddings: leave the student's embedding tables (``nn.Embedding``) as they
            are: a third to a half of a small encoder's parameters, cheap to keep, and left
            exactly as the teacher's for later embedding quantization.
        progress: show a progress bar.

    Raises:
        ConfigError: bad weights or loss (nothing trained).
        ShapeError: student and teacher outputs differ in shape (nothing trained).
    """
    _check_weights(loss, cosine_weight, mse_weight, hidden_weight)
    check_kd_args(temperature, alpha)
    check_compatible(student, teacher, task)
    s_layers = t_layers = None
    teacher_mode = teacher.training
    teacher.eval()
    requires = [p.requires_grad for p in teacher.parameters()]
    for param in teacher.parameters():
        param.requires_grad_(False)
    drops = [] if dropout else [(m, m.p) for m in student.modules() if isinstance(m, nn.Dropout)]
    for module, _ in drops:
        module.p = 0.0
    frozen: list[Any] = []
    if freeze_embeddings:
        for module in student.modules():
            if isinstance(module, nn.Embedding):
                frozen.extend(p for p in module.parameters() if p.requires_grad)
    for param in frozen:
        param.requires_grad_(False)
    try:
        if hidden_weight > 0:
            s_layers, t_layers = _LayerOutputs(student), _LayerOutputs(teacher)
            missing = [i for i in s_layers.teacher_indices() if i >= len(t_layers.layers)]
            if missing:
                raise ShapeError(
                    f"student layers come from teacher layers {missing}, but the teacher has "
                    f"{len(t_layers.layers)}; distill from the model the student was cut from"
                )

        def objective(model: nn.Module, batch: Any) -> torch.Tensor:
            inputs, target = split_batch(batch)
            with torch.no_grad():
                t_out = call_model(teacher, inputs)
            s_out = call_model(model, inputs)
            if loss == "logits":
                value = hinton_loss(s_out, t_out, target, temperature, alpha)
            else:
                value = embedding_distill_loss(s_out, t_out, cosine_weight, mse_weight)
            if s_layers is not None and t_layers is not None:
                value = value + hidden_weight * _hidden_loss(s_layers, t_layers, inputs)
            return value

        from torchslim.device import on_device

        with on_device(teacher, task.device):  # teacher and student on the task's device
            return task.fit(
                student,
                epochs=epochs,
                lr=lr,
                objective=objective,
                progress=progress,
                description="distill",
            )
    finally:
        for capture in (s_layers, t_layers):
            if capture is not None:
                capture.remove()
        for module, p in drops:
            module.p = p
        for param in frozen:
            param.requires_grad_(True)
        for param, flag in zip(teacher.parameters(), requires, strict=True):
            param.requires_grad_(flag)
        teacher.train(teacher_mode)
        student.eval()


def _check_weights(loss: str, cosine: float, mse: float, hidden: float) -> None:
    if loss not in ("embedding", "logits"):
        raise ConfigError(
            f"embedding_distill.loss {loss!r} is unknown; use 'embedding' or 'logits'"
        )
    for name, value in (("cosine_weight", cosine), ("mse_weight", mse), ("hidden_weight", hidden)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"embedding_distill.{name} must be a number >= 0, got {value!r}")
    if loss == "embedding" and cosine == 0 and mse == 0:
        raise ConfigError(
            "embedding_distill: cosine_weight and mse_weight are both 0; set at least one > 0"
        )


@register_config
@dataclass(frozen=True)
class EmbeddingDistill(TechniqueConfig):
    """Distillation recovery for transformer encoders (embeddings or logits + hidden states).

    The teacher is ``context.teacher`` (a recipe sets the uncompressed model), else the
    task's baseline.

    Args:
        epochs: training epochs over the task's train split (>= 1).
        lr: learning rate; None uses the task's.
        loss: ``embedding`` (cosine + relative MSE on outputs) or ``logits`` (Hinton KD).
        cosine_weight, mse_weight: weights of the embedding terms.
        hidden_weight: weight of the per-layer hidden-state matching term.
        temperature, alpha: Hinton KD settings (``loss="logits"``).
        dropout: keep the student's dropout on while training.
        freeze_embeddings: keep the embedding tables fixed while distilling.
    """

    name = "embedding_distill"
    family = "distillation"
    epochs: int = 3
    lr: float | None = None
    loss: Literal["embedding", "logits"] = "embedding"
    cosine_weight: float = 1.0
    mse_weight: float = 1.0
    hidden_weight: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.7
    dropout: bool = False
    freeze_embeddings: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(
                f"embedding_distill.epochs must be an integer >= 1, got {self.epochs!r}"
            )
        check_lr(self.name, self.lr)
        _check_weights(self.loss, self.cosine_weight, self.mse_weight, self.hidden_weight)
        check_kd_args(self.temperature, self.alpha)


@register_handler(EmbeddingDistill)
def _embedding_distill(
    model: nn.Module, config: EmbeddingDistill, context: ApplyContext
) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("embedding_distill needs a task (texts to train on); pass task= to apply")
    teacher = context.teacher if context.teacher is not None else task.baseline(progress=False)
    result = distill_encoder(
        model,
        teacher,
        task,
        epochs=config.epochs,
        lr=config.lr,
        loss=config.loss,
        cosine_weight=config.cosine_weight,
        mse_weight=config.mse_weight,
        hidden_weight=config.hidden_weight,
        temperature=config.temperature,
        alpha=config.alpha,
        dropout=config.dropout,
        freeze_embeddings=config.freeze_embeddings,
    )
    context.notes.setdefault("distill", []).append(
        {"steps": result.steps, "seconds": round(result.seconds, 3), "loss": result.final_loss}
    )
    return model
