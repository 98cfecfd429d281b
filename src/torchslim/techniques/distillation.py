"""Knowledge distillation: Hinton KD, feature (hint) distillation, embedding losses.

Two uses share one trainer, :func:`distill`: training a smaller student from a
teacher, and the recovery step after pruning, quantization or factorization (the
:class:`Distill` config), with the uncompressed model as teacher. The trainer is
the Task's own loop (``task.fit(model, objective=...)``), so optimizer, schedule,
seed and NaN checks are the task's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import call_model, eval_mode, split_batch
from torchslim.device import on_device
from torchslim.errors import ConfigError, ShapeError
from torchslim.task import Task, TrainResult
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)

LOSS_KINDS = ("logits", "cosine", "mse")


def check_kd_args(temperature: float, alpha: float) -> None:
    """Raise ConfigError unless ``temperature > 0`` and ``0 <= alpha <= 1``."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; use e.g. 4.0")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}; use e.g. 0.7")


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss.

    ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 - alpha) · CE(s, target)``;
    the T² factor keeps the soft term's gradient scale independent of T. Without a
    target the loss is the soft term alone (times alpha).
    """
    check_kd_args(temperature, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; distill between models with the same outputs"
        )
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    loss = alpha * temperature**2 * soft
    if target is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, target)
    return loss


def embedding_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Distance between student and teacher embeddings: ``1 - cosine`` (mean) or MSE."""
    if student.shape != teacher.shape:
        raise ShapeError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings "
            f"{tuple(teacher.shape)} differ; distill between models with the same outputs"
        )
    teacher = teacher.detach()
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ConfigError(f"embedding loss {kind!r} is unknown; use 'cosine' or 'mse'")


# ------------------------------------------------------------------ feature hints


def make_adapter(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """A learned map from a student feature to the teacher's width (1×1 conv or linear).

    Identity when the widths already match. Spatial sizes that differ are pooled to the
    teacher's size in :class:`FeatureHints`.
    """
    s_width, t_width = student_feature.shape[1], teacher_feature.shape[1]
    if s_width == t_width:
        return nn.Identity()
    dims = student_feature.dim() - 2
    if dims == 0:
        return nn.Linear(s_width, t_width, bias=False)
    if dims == 1:
        return nn.Conv1d(s_width, t_width, kernel_size=1, bias=False)
    if dims == 2:
        return nn.Conv2d(s_width, t_width, kernel_size=1, bias=False)
    raise ShapeError(f"feature of shape {tuple(student_feature.shape)} has no adapter; use 2-4D")


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise ConfigError(
                f"{role} has no layer {missing[0]!r} for feature distillation; layer names "
                f"look like {', '.join(sorted(n for n in modules if n)[:6])}"
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            modules[name].register_forward_hook(self._hook(name)) for name in dict.fromkeys(names)
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output if isinstance(output, torch.Tensor) else output[0]

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FeatureHints(nn.Module):
    """MSE between chosen student and teacher layers through learned adapters (FitNets).

    Args:
        pairs: ``(student_layer, teacher_layer)`` module names.
        adapters: one adapter per pair (see :func:`make_adapter`).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], adapters: Sequence[nn.Module]) -> None:
        super().__init__()
        self.pairs = [tuple(pair) for pair in pairs]
        self.adapters = nn.ModuleList(adapters)

    def forward(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(teacher.values())).device)
        for (s_name, t_name), adapter in zip(self.pairs, self.adapters, strict=True):
            mapped, target = adapter(student[s_name]), teacher[t_name].detach()
            if mapped.shape[2:] != target.shape[2:]:
                pool = F.adaptive_avg_pool1d if mapped.dim() == 3 else F.adaptive_avg_pool2d
                mapped = pool(mapped, target.shape[2:])
            total = total + F.mse_loss(mapped, target)
        return total / max(1, len(self.pairs))


class _StudentWithAdapters(nn.Module):
    """Student plus its hint adapters, so the task's optimizer trains both."""

    def __init__(self, student: nn.Module, hints: FeatureHints | None) -> None:
        super().__init__()
        self.student = student
        self.hints = hints

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


# ------------------------------------------------------------------ trainer


def check_compatible(student: nn.Module, teacher: nn.Module, task: Task) -> None:
    """Raise ShapeError unless student and teacher give outputs of the same shape."""
    inputs = task.inputs(2)
    with eval_mode(student), eval_mode(teacher), torch.no_grad():  # each module's mode restored
        s_out, t_out = call_model(student, inputs), call_model(teacher, inputs)
    if tuple(s_out.shape) != tuple(t_out.shape):
        raise ShapeError(
            f"student outputs {tuple(s_out.shape[1:])} but teacher outputs "
            f"{tuple(t_out.shape[1:])} per sample; distill between models with the same outputs"
        )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    loss: str = "logits",
    features: Sequence[tuple[str, str]] = (),
    feature_weight: float = 1.0,
    after_step: Any = None,
    progress: bool = False,
    mixup: float = 0.0,
    after_epoch: Any = None,
) -> TrainResult:
    """Train ``student`` in place to match ``teacher`` on the task's training data.

    A teacher that has memorized its training set (100% train accuracy, softmax near
    one-hot) has no "dark knowledge" left to give on those very inputs. ``mixup > 0``
    distills on mixed inputs ``lam·x_i + (1-lam)·x_j`` (``lam ~ Beta(mixup, mixup)``),
    where the teacher's soft outputs are informative again ("function matching",
    Beyer et al. 2022); the hard-label term is mixed the same way.

    Args:
        student: the model trained (modified in place).
        teacher: the reference model; frozen, never modified.
        task: data, optimizer, schedule and seed (``task.fit``).
        epochs, lr: overrides of the task's train config.
        temperature, alpha: Hinton KD settings (``loss="logits"``).
        loss: ``"logits"`` (Hinton KD + hard labels), or ``"cosine"`` / ``"mse"`` on
            embeddings (plus ``(1 - alpha)`` · the task loss when the batch has labels
            and ``alpha < 1``).
        features: ``(student_layer, teacher_layer)`` pairs for hint distillation.
        feature_weight: weight of the hint term.
        after_step: forwarded to ``task.fit`` (e.g. to keep pruning masks).
        progress: show a progress bar.
        mixup: Beta concentration of input mixing for tensor inputs (0: off).
        after_epoch: ``after_epoch(student, epoch)`` after each epoch (see ``task.fit``).

    Raises:
        ConfigError: bad temperature, alpha, loss kind or layer names (nothing trained).
        ShapeError: student and teacher outputs differ in shape (nothing trained).
    """
    check_kd_args(temperature, alpha)
    if loss not in LOSS_KINDS:
        raise ConfigError(f"loss {loss!r} is unknown; use one of {LOSS_KINDS}")
    if feature_weight < 0:
        raise ConfigError(f"feature_weight must be >= 0, got {feature_weight}")
    if not (mixup >= 0 and math.isfinite(mixup)):
        raise ConfigError(f"mixup must be >= 0 (0 turns it off), got {mixup}")
    check_compatible(student, teacher, task)
    teacher_modes = [(module, module.training) for module in teacher.modules()]
    teacher.eval()
    requires = [p.requires_grad for p in teacher.parameters()]
    for param in teacher.parameters():
        param.requires_grad_(False)
    s_capture = t_capture = None
    try:
        hints = None
        if features:
            s_capture = _Capture(student, [s for s, _ in features], "student")
            t_capture = _Capture(teacher, [t for _, t in features], "teacher")
            inputs = task.inputs(2)
            with torch.no_grad():
                student.eval()
                call_model(student, inputs)
                call_model(teacher, inputs)
            adapters = [
                make_adapter(s_capture.outputs[s], t_capture.outputs[t]) for s, t in features
            ]
            hints = FeatureHints(features, adapters)
        wrapper = _StudentWithAdapters(student, hints)

        def objective(model: nn.Module, batch: Any) -> torch.Tensor:
            inputs, target = split_batch(batch)
            lam, partner = 1.0, None
            if mixup > 0 and isinstance(inputs, torch.Tensor) and inputs.shape[0] > 1:
                lam = float(torch.distributions.Beta(mixup, mixup).sample())
                partner = torch.randperm(inputs.shape[0], device=inputs.device)
                inputs = lam * inputs + (1 - lam) * inputs[partner]
            with torch.no_grad():
                teacher_out = call_model(teacher, inputs)
            student_out = call_model(wrapper.student, inputs)
            if loss == "logits" and partner is not None and target is not None:
                value = lam * hinton_loss(student_out, teacher_out, target, temperature, alpha) + (
                    1 - lam
                ) * hinton_loss(student_out, teacher_out, target[partner], temperature, alpha)
            elif loss == "logits":
                value = hinton_loss(student_out, teacher_out, target, temperature, alpha)
            else:
                value = alpha * embedding_loss(student_out, teacher_out, loss)
                if target is not None and alpha < 1.0:
                    value = value + (1 - alpha) * task.loss(student_out, target)
            if hints is not None:
                value = value + feature_weight * hints(s_capture.outputs, t_capture.outputs)
            return value

        with on_device(teacher, task.device):  # teacher and student on the task's device
            return task.fit(
                wrapper,
                epochs=epochs,
                lr=lr,
                objective=objective,
                after_step=after_step,
                after_epoch=(
                    (lambda _wrapper, epoch: after_epoch(student, epoch))
                    if after_epoch is not None
                    else None
                ),
                progress=progress,
                description="distill",
            )
    finally:
        for capture in (s_capture, t_capture):
            if capture is not None:
                capture.remove()
        for param, flag in zip(teacher.parameters(), requires, strict=True):
            param.requires_grad_(flag)
        for module, mode in teacher_modes:  # each module's own mode, not the root's
            module.training = mode
        student.eval()


# ------------------------------------------------------------------ recovery step


@register_config
@dataclass(frozen=True)
class Distill(TechniqueConfig):
    """Recovery (or student training) by distillation from a teacher.

    The teacher is ``context.teacher`` when the caller sets one (a recipe sets the
    uncompressed model), else the task's trained baseline.

    Args:
        epochs: training epochs (>= 1).
        lr: learning rate; None uses the task's.
        temperature: softening temperature T (> 0).
        alpha: weight of the soft (teacher) term in [0, 1]; 1 - alpha goes to hard labels.
        loss: ``logits`` (classification), ``cosine`` or ``mse`` (embedding models).
        features: ``(student_layer, teacher_layer)`` pairs for hint distillation.
        feature_weight: weight of the hint term (>= 0).
    """

    name = "distill"
    family = "distillation"
    role = "recovery"
    epochs: int = 5
    lr: float | None = None
    temperature: float = 4.0
    alpha: float = 0.7
    loss: str = "logits"
    features: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    mixup: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"distill.epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.mixup >= 0:
            raise ConfigError(f"distill.mixup must be >= 0 (0 turns it off), got {self.mixup}")
        check_lr(self.name, self.lr)
        check_kd_args(self.temperature, self.alpha)
        if self.loss not in LOSS_KINDS:
            raise ConfigError(f"distill.loss {self.loss!r} is unknown; use one of {LOSS_KINDS}")
        if self.feature_weight < 0:
            raise ConfigError(f"distill.feature_weight must be >= 0, got {self.feature_weight}")
        for pair in self.features:
            if len(pair) != 2 or not all(isinstance(n, str) and n for n in pair):
                raise ConfigError(
                    f"distill.features entries must be [student_layer, teacher_layer], got {pair!r}"
                )


@register_handler(Distill)
def _distill(model: nn.Module, config: Distill, context: ApplyContext) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("distill needs a task (data to train on); pass task= to apply")
    teacher = getattr(context, "teacher", None)
    if teacher is None:
        teacher = task.baseline(progress=False)
    result = distill(
        model,
        teacher,
        task,
        epochs=config.epochs,
        lr=config.lr,
        temperature=config.temperature,
        alpha=config.alpha,
        loss=config.loss,
        features=config.features,
        feature_weight=config.feature_weight,
        mixup=config.mixup,
        after_epoch=context.epoch_hook(config),
    )
    context.notes.setdefault("distill", []).append(
        {"steps": result.steps, "seconds": round(result.seconds, 3), "loss": result.final_loss}
    )
    return model


@register_config
@dataclass(frozen=True)
class Student(TechniqueConfig):
    """Replace the model by a smaller student trained by distillation from it.

    The current model (usually the uncompressed baseline) is the teacher; the student
    is a reference architecture built from ``model`` and ``model_kwargs`` (e.g.
    ``mnist1d_cnn`` with ``{"channels": 10}``), trained with the task's loop.

    Args:
        model: registered architecture name of the student (``torchslim.models``).
        model_kwargs: its keyword arguments.
        epochs: training epochs (>= 1).
        lr: learning rate; None uses the task's.
        temperature, alpha: Hinton KD settings.
    """

    name = "student"
    family = "distillation"
    model: str = "mnist1d_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    lr: float | None = None
    temperature: float = 4.0
    alpha: float = 0.7
    mixup: float = 0.0

    def __post_init__(self) -> None:
        from torchslim.models import MODELS

        if not self.mixup >= 0:
            raise ConfigError(f"student.mixup must be >= 0 (0 turns it off), got {self.mixup}")

        if self.model not in MODELS:
            raise ConfigError(
                f"student.model {self.model!r} is unknown; use one of {sorted(MODELS)}"
            )
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"student.epochs must be an integer >= 1, got {self.epochs!r}")
        check_lr(self.name, self.lr)
        check_kd_args(self.temperature, self.alpha)


@register_handler(Student)
def _student(model: nn.Module, config: Student, context: ApplyContext) -> nn.Module:
    from torchslim.models import build_model

    task = context.task
    if task is None:
        raise ConfigError("student needs a task (data to train on); pass task= to apply")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.train_config.seed)
        student = build_model(config.model, **config.model_kwargs)
    check_compatible(student, model, task)
    result = distill(
        student,
        model,
        task,
        epochs=config.epochs,
        lr=config.lr,
        temperature=config.temperature,
        alpha=config.alpha,
        mixup=config.mixup,
    )
    student.torchslim_arch = {"name": config.model, "kwargs": dict(config.model_kwargs)}
    context.notes.setdefault("distill", []).append(
        {"steps": result.steps, "seconds": round(result.seconds, 3), "loss": result.final_loss}
    )
    return student.eval()
