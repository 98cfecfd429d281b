"""Recovery steps: fine-tuning with the task's own training loop."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from torchslim.errors import ConfigError
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)


@register_config
@dataclass(frozen=True)
class FineTune(TechniqueConfig):
    """Fine-tune with the task's loop; pruning masks and fake-quant stay in force.

    Args:
        epochs: training epochs (>= 1).
        lr: learning rate; None takes a tenth of the task's training lr, the usual
            choice for recovery after compression.
    """

    name = "finetune"
    family = "recovery"
    role = "recovery"
    epochs: int = 3
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"finetune epochs must be >= 1, got {self.epochs}")
        check_lr(self.name, self.lr)


@register_handler(FineTune)
def _finetune(model: nn.Module, config: FineTune, context: ApplyContext) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("finetune needs a task (its data and training loop); pass task=")
    lr = config.lr if config.lr is not None else task.train_config.lr / 10
    result = task.fit(
        model,
        epochs=config.epochs,
        lr=lr,
        description="fine-tune",
        after_epoch=context.epoch_hook(config),
    )
    context.notes.setdefault("train_seconds", 0.0)
    context.notes["train_seconds"] += result.seconds
    return model
