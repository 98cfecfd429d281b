"""Pruning schedules: one-shot, iterative (prune, fine-tune, repeat) and gradual AGP.

Fine-tuning is the task's own loop (:meth:`torchslim.Task.fit`); masks are
``torch.nn.utils.prune`` reparametrizations, so they hold during it. Every schedule copies
the model first (the input is never modified) and, for unstructured configs, makes the
masks permanent at the end unless ``permanent=False``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import ConfigError, UnsupportedError
from torchslim.techniques.base import (
    CONFIGS,
    ApplyContext,
    Scope,
    TechniqueConfig,
    apply,
    check_lr,
    register_config,
    register_handler,
)
from torchslim.techniques.channels import ChannelPruning, prune_channels
from torchslim.techniques.pruning import UnstructuredPruning, make_permanent, prune_unstructured

if TYPE_CHECKING:
    from torchslim.task import Task


def _target(config: TechniqueConfig) -> float:
    if isinstance(config, UnstructuredPruning):
        return config.sparsity
    if isinstance(config, ChannelPruning):
        return config.ratio
    raise UnsupportedError(
        f"{type(config).__name__} has no sparsity to schedule; schedules take an unstructured "
        "pruning config or ChannelPruning"
    )


def _prune_to(
    model: nn.Module, config: TechniqueConfig, context: ApplyContext, level: float
) -> nn.Module:
    """The model pruned to ``level``: masked in place, or a narrower copy for channels."""
    if isinstance(config, UnstructuredPruning):
        return prune_unstructured(model, config, context, level)
    return prune_channels(model, config, context, level)  # type: ignore[arg-type]


def _finish(model: nn.Module, config: TechniqueConfig, permanent: bool) -> nn.Module:
    if permanent and isinstance(config, UnstructuredPruning):
        make_permanent(model)
    return model.eval()


def one_shot(
    model: nn.Module,
    config: TechniqueConfig,
    task: Task | None = None,
    *,
    finetune_epochs: int = 0,
    lr: float | None = None,
    permanent: bool = True,
    context: ApplyContext | None = None,
) -> nn.Module:
    """Prune once to the config's target, then optionally fine-tune with masks enforced."""
    if finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    if finetune_epochs and task is None:
        raise ConfigError("fine-tuning needs the task: pass task=")
    pruned = apply(model, config, task=task, context=context)
    if finetune_epochs:
        task.fit(pruned, epochs=finetune_epochs, lr=lr, progress=False, description="fine-tune")
    return _finish(pruned, config, permanent)


def iterative(
    model: nn.Module,
    config: TechniqueConfig,
    task: Task | None,
    *,
    steps: int = 3,
    epochs_per_step: int = 1,
    lr: float | None = None,
    permanent: bool = True,
    context: ApplyContext | None = None,
    ramp: str = "linear",
) -> nn.Module:
    """Reach the target in ``steps`` increments, fine-tuning after each.

    Step ``i`` prunes to ``target * i / steps`` of the original weights (or channels) with
    ``ramp="linear"``, or to the AGP cubic level ``target * (1 - (1 - i / steps)^3)`` with
    ``ramp="cubic"`` (large cuts first, while the network is most redundant; the gradual
    schedule for channel pruning, whose shapes cannot change inside a training loop).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if ramp not in RAMPS:
        raise ConfigError(f"ramp {ramp!r} is unknown; use one of {RAMPS}")
    if (
        isinstance(epochs_per_step, bool)
        or not isinstance(epochs_per_step, int)
        or (epochs_per_step < 0)
    ):
        raise ConfigError(f"epochs_per_step must be an int >= 0, got {epochs_per_step!r}")
    if task is None:
        raise ConfigError("iterative pruning fine-tunes between steps and needs task=")
    target = _target(config)
    context = context or ApplyContext(task=task)
    context.task = context.task or task
    pruned = copy.deepcopy(model)
    kept = 1.0
    for step in range(1, steps + 1):
        level = (
            target * step / steps if ramp == "linear" else agp_sparsity(step, 0.0, target, 0, steps)
        )
        if isinstance(config, ChannelPruning):  # widths shrink, so ratios are relative
            relative = 1 - (1 - level) / kept
            kept = 1 - level
            pruned = _prune_to(pruned, config, context, max(0.0, min(relative, 0.99)))
        else:
            pruned = _prune_to(pruned, config, context, level)
        if epochs_per_step:
            task.fit(pruned, epochs=epochs_per_step, lr=lr, progress=False, description="fine-tune")
    return _finish(pruned, config, permanent)


RAMPS = ("linear", "cubic")


def agp_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic ramp: ``final + (initial - final) * (1 - progress)^3``."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / max(1, end - start)
    return final + (initial - final) * (1 - progress) ** 3


def gradual(
    model: nn.Module,
    config: UnstructuredPruning,
    task: Task | None,
    *,
    epochs: int = 5,
    initial: float = 0.0,
    ramp_fraction: float = 0.75,
    every: int = 10,
    lr: float | None = None,
    permanent: bool = True,
    context: ApplyContext | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    mixup: float = 0.0,
) -> nn.Module:
    """Gradual (AGP) pruning: train ``epochs`` while sparsity ramps cubically to the target.

    Masks are updated every ``every`` optimizer steps during the first ``ramp_fraction``
    of training; the rest recovers at the final sparsity. With a ``teacher`` (e.g. the
    unpruned model) the training is knowledge distillation from it (Hinton loss with
    ``temperature`` / ``alpha``; ``mixup > 0`` distills on mixed inputs, see
    :func:`~torchslim.techniques.distillation.distill`) instead of the task loss.
    """
    if not isinstance(config, UnstructuredPruning):
        raise UnsupportedError(
            f"gradual (AGP) pruning takes an unstructured config, got {type(config).__name__}; "
            "use iterative() for ChannelPruning (its shapes cannot change mid-training)"
        )
    if task is None:
        raise ConfigError("gradual pruning trains the model and needs task=")
    if epochs < 1 or every < 1 or not 0 < ramp_fraction <= 1:
        raise ConfigError(
            f"gradual pruning needs epochs >= 1, every >= 1 and 0 < ramp_fraction <= 1, got "
            f"epochs={epochs}, every={every}, ramp_fraction={ramp_fraction}"
        )
    if not 0 <= initial <= config.sparsity:
        raise ConfigError(f"initial must be in [0, sparsity={config.sparsity}], got {initial}")
    context = context or ApplyContext(task=task)
    context.task = context.task or task
    pruned = copy.deepcopy(model)
    total = epochs * len(task.loader("train", shuffle=True))
    end = max(1, int(total * ramp_fraction))
    prune_unstructured(pruned, config, context, initial)

    def update(trained: nn.Module, step: int) -> None:
        if step % every == 0 or step == end:
            if step <= end:
                level = agp_sparsity(step, initial, config.sparsity, 0, end)
                prune_unstructured(trained, config, context, level)

    if teacher is None:
        task.fit(pruned, epochs=epochs, lr=lr, after_step=update, progress=False, description="AGP")
    else:
        from torchslim.techniques.distillation import distill

        distill(
            pruned,
            teacher,
            task,
            epochs=epochs,
            lr=lr,
            temperature=temperature,
            alpha=alpha,
            after_step=update,
            mixup=mixup,
        )
    prune_unstructured(pruned, config, context, config.sparsity)
    return _finish(pruned, config, permanent)


IMPORTANCES = ("magnitude", "gradient", "taylor", "random")


@register_config
@dataclass(frozen=True)
class GradualPruning(TechniqueConfig):
    """Unstructured pruning on the AGP schedule, as a recipe step (see :func:`gradual`).

    Args:
        sparsity: final fraction of the selected weights set to zero, in [0, 1).
        importance: ``magnitude``, ``gradient``, ``taylor`` or ``random``.
        mode, scope: as in the unstructured pruning configs.
        epochs: training epochs during which sparsity ramps up and then recovers.
        ramp_fraction: share of the training over which sparsity ramps (cubic).
        every: optimizer steps between mask updates.
        lr: learning rate (None: a tenth of the task's).
        distill: train by distillation from the unpruned model (the recipe's teacher when
            there is one) instead of the task loss; ``temperature``, ``alpha`` (weight of the
            soft term) and ``mixup`` as in the ``distill`` step.
    """

    name = "gradual_pruning"
    family = "pruning"
    sparsity: float = 0.8
    importance: str = "magnitude"
    mode: str = "global"
    scope: Scope = Scope()
    epochs: int = 20
    ramp_fraction: float = 0.75
    every: int = 10
    lr: float | None = None
    distill: bool = False
    temperature: float = 2.0
    alpha: float = 0.5
    mixup: float = 0.0

    def __post_init__(self) -> None:
        from torchslim.techniques.distillation import check_kd_args

        check_kd_args(self.temperature, self.alpha)
        if (
            isinstance(self.mixup, bool)
            or not isinstance(self.mixup, (int, float))
            or self.mixup < 0
        ):
            raise ConfigError(f"mixup must be a number >= 0 (0: off), got {self.mixup!r}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"importance {self.importance!r} is unknown; use one of {IMPORTANCES}"
            )
        if self.epochs < 1 or self.every < 1 or not 0 < self.ramp_fraction <= 1:
            raise ConfigError(
                "gradual_pruning needs epochs >= 1, every >= 1 and 0 < ramp_fraction <= 1"
            )
        check_lr(self.name, self.lr)
        self.target()  # validates sparsity, mode and scope

    def target(self) -> UnstructuredPruning:
        """The unstructured config the schedule prunes with."""
        config_type: Any = CONFIGS[f"{self.importance}_pruning"]
        return config_type(sparsity=self.sparsity, mode=self.mode, scope=self.scope)


@register_handler(GradualPruning)
def _gradual(model: nn.Module, config: GradualPruning, context: ApplyContext) -> nn.Module:
    if context.task is None:
        raise ConfigError("gradual_pruning trains the model and needs a task; pass task=")
    lr = config.lr if config.lr is not None else context.task.train_config.lr / 10
    return gradual(
        model,
        config.target(),
        context.task,
        epochs=config.epochs,
        ramp_fraction=config.ramp_fraction,
        every=config.every,
        lr=lr,
        context=context,
        teacher=(context.teacher if context.teacher is not None else model)
        if config.distill
        else None,
        temperature=config.temperature,
        alpha=config.alpha,
        mixup=config.mixup,
    )


@register_config
@dataclass(frozen=True)
class IterativePruning(TechniqueConfig):
    """Unstructured pruning in ``steps`` increments with fine-tuning after each (see :func:`iterative`).

    Args:
        sparsity: final fraction of the selected weights set to zero, in [0, 1).
        importance: ``magnitude``, ``gradient``, ``taylor`` or ``random``.
        mode, scope: as in the unstructured pruning configs.
        steps: pruning increments (1 = one-shot followed by ``epochs_per_step`` of fine-tuning).
        epochs_per_step: fine-tuning epochs after each increment.
        ramp: ``linear`` (equal increments) or ``cubic`` (AGP levels: large cuts first).
        lr: fine-tuning learning rate (None: a tenth of the task's, as ``finetune``).
    """

    name = "iterative_pruning"
    family = "pruning"
    sparsity: float = 0.8
    importance: str = "magnitude"
    mode: str = "global"
    scope: Scope = Scope()
    steps: int = 3
    epochs_per_step: int = 2
    ramp: str = "linear"
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"importance {self.importance!r} is unknown; use one of {IMPORTANCES}"
            )
        _check_steps(self.name, self.steps, self.epochs_per_step, self.ramp)
        check_lr(self.name, self.lr)
        self.target()  # validates sparsity, mode and scope

    def target(self) -> UnstructuredPruning:
        """The unstructured config each step prunes with."""
        config_type: Any = CONFIGS[f"{self.importance}_pruning"]
        return config_type(sparsity=self.sparsity, mode=self.mode, scope=self.scope)


@register_config
@dataclass(frozen=True)
class IterativeChannelPruning(TechniqueConfig):
    """Structured channel pruning in ``steps`` increments with fine-tuning after each.

    The fields up to ``max_ratio`` are :class:`~torchslim.techniques.channels.ChannelPruning`'s
    (``ratio`` is the final fraction of channels removed); ``ramp="cubic"`` is the gradual
    (AGP-like) schedule for channels. See :func:`iterative`.
    """

    name = "iterative_channel_pruning"
    family = "pruning"
    ratio: float = 0.5
    importance: str = "l2"
    mode: str = "layer"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    round_to: int | None = None
    scope: Scope = Scope()
    keep_classifier: bool = True
    batches: int = 8
    head_ratio: float = 0.0
    max_ratio: float = 0.75
    steps: int = 3
    epochs_per_step: int = 2
    ramp: str = "linear"
    lr: float | None = None

    def __post_init__(self) -> None:
        _check_steps(self.name, self.steps, self.epochs_per_step, self.ramp)
        check_lr(self.name, self.lr)
        self.target()  # validates the channel-pruning fields

    def target(self) -> ChannelPruning:
        """The channel-pruning config each step prunes with."""
        return ChannelPruning(**{f.name: getattr(self, f.name) for f in fields(ChannelPruning)})


def _check_steps(owner: str, steps: Any, epochs_per_step: Any, ramp: Any) -> None:
    for field_name, value, least in (("steps", steps, 1), ("epochs_per_step", epochs_per_step, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{owner}.{field_name} must be an int >= {least}, got {value!r}")
    if ramp not in RAMPS:
        raise ConfigError(f"{owner}.ramp {ramp!r} is unknown; use one of {RAMPS}")


@register_handler(IterativePruning)
@register_handler(IterativeChannelPruning)
def _iterative(
    model: nn.Module, config: IterativePruning | IterativeChannelPruning, context: ApplyContext
) -> nn.Module:
    if context.task is None:
        raise ConfigError(f"{config.name} fine-tunes between steps and needs a task; pass task=")
    lr = config.lr if config.lr is not None else context.task.train_config.lr / 10
    return iterative(
        model,
        config.target(),
        context.task,
        steps=config.steps,
        epochs_per_step=config.epochs_per_step,
        lr=lr,
        context=context,
        ramp=config.ramp,
    )
