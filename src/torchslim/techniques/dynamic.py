"""Dynamic networks: early exit and gated branches that really skip computation.

Early exit (BranchyNet): auxiliary heads after chosen stages; at inference a sample
leaves at the first head whose softmax confidence reaches ``threshold``, and only the
samples still in flight are passed on, so the skipped layers are never computed
(``count_macs`` of a forced path shows it). Gated branches: a light gate picks, per
input, which branch of a block to compute (soft mixture in training, hard choice at
inference).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import call_model, eval_mode, split_batch
from torchslim.errors import ConfigError, UnsupportedError
from torchslim.measure import benchmark_latency, count_macs
from torchslim.task import Task
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)
from torchslim.techniques.distillation import hinton_loss

EXIT_MODES = ("joint", "distill")
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ACTS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU)


def chain_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level children, with ``nn.Sequential`` ones expanded, in order."""
    chain: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            chain += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            chain.append((name, child))
    return chain


def default_exits(chain: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """After every pooling layer (else every activation) of the trunk, except the last."""
    trunk = []
    for name, module in chain:
        if isinstance(module, (nn.Flatten, nn.Linear)):
            break
        trunk.append((name, module))
    points = [n for n, m in trunk if isinstance(m, _POOLS)] or [
        n for n, m in trunk if isinstance(m, _ACTS)
    ]
    return points[:-1]


def _head(feature: torch.Tensor, num_classes: int, pool: int) -> nn.Module:
    if feature.dim() == 2:
        return nn.Sequential(nn.Linear(feature.shape[1], num_classes))
    dims = feature.dim() - 2
    pooler = nn.AdaptiveAvgPool1d(pool) if dims == 1 else nn.AdaptiveAvgPool2d(pool)
    if dims > 2:
        raise UnsupportedError(f"early exit after a {feature.dim()}-D feature is not supported")
    return nn.Sequential(
        pooler, nn.Flatten(), nn.Linear(feature.shape[1] * pool**dims, num_classes)
    )


class EarlyExitModel(nn.Module):
    """A trunk cut into segments, an exit head after each but the last, and the final head.

    Args:
        segments: ``len(heads) + 1`` modules applied in order; the last ends in logits.
        heads: exit classifiers, one after each segment but the last.
        exits: the exit point names (for reports and checkpoints).
        threshold: softmax confidence at which a sample leaves (> 1: never leaves early).
    """

    input_dependent_macs = True  # measure.model_macs averages its MACs over the data

    def __init__(
        self,
        segments: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        exits: Sequence[str],
        threshold: float = 0.9,
    ) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.exits = list(exits)
        self.threshold = float(threshold)
        self.forced_exit: int | None = None
        self.exit_counts = [0] * (len(heads) + 1)

    def exit_shares(self, task: Task, split: str = "test") -> list[float]:
        """Share of the split's samples that leave at each exit (the final head last),
        rounded to 4 decimals; the model's weights, mode and ``exit_counts`` are kept."""
        saved = self.exit_counts
        self.exit_counts = [0] * len(saved)
        try:
            task.evaluate(self, split)
            total = sum(self.exit_counts) or 1
            return [round(count / total, 4) for count in self.exit_counts]
        finally:
            self.exit_counts = saved

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit head then the final head, for every sample (training)."""
        outputs = []
        for index, segment in enumerate(self.segments):
            x = segment(x)
            if index < len(self.heads):
                outputs.append(self.heads[index](x))
        outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: final logits. Eval: each sample leaves at its first confident head."""
        if self.training:
            return self.forward_all(x)[-1]
        return self._dynamic(x)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        active = torch.arange(x.shape[0], device=x.device)
        result: torch.Tensor | None = None
        for index, segment in enumerate(self.segments):
            x = segment(x)
            if index == len(self.heads):
                break
            logits = self.heads[index](x)
            if result is None:
                result = logits.new_zeros(active.shape[0], logits.shape[1])
            if self.forced_exit is not None:
                leave = torch.full_like(active, index == self.forced_exit, dtype=torch.bool)
            else:
                confidence = logits.softmax(dim=-1).amax(dim=-1)
                leave = confidence >= self.threshold
            if bool(leave.any()):
                result[active[leave]] = logits[leave]
                self.exit_counts[index] += int(leave.sum())
                stay = ~leave
                x, active = x[stay], active[stay]
                if active.numel() == 0:
                    return result
        if result is None:  # no exit heads at all
            return x
        result[active] = x
        self.exit_counts[-1] += int(active.numel())
        return result


def build_early_exit(
    model: nn.Module,
    inputs: Any,
    exits: Sequence[str] = (),
    num_classes: int | None = None,
    head_pool: int = 2,
    threshold: float = 0.9,
) -> EarlyExitModel:
    """Wrap a sequential-shaped model with exit heads after the named points.

    The model's top-level children (``Sequential`` ones expanded) must compute its forward
    in order; this is checked on ``inputs``. The model's layers are shared, not copied.

    Raises:
        ConfigError: an exit point that does not exist (nothing is modified).
        UnsupportedError: a model whose forward is not its children in order.
    """
    chain = chain_of(model)
    names = [name for name, _ in chain]
    exits = list(exits) or default_exits(chain)
    if not exits:
        raise ConfigError("the model has no early-exit point; name one with exits=[...]")
    for point in exits:
        if point not in names[:-1]:
            raise ConfigError(
                f"early-exit point {point!r} does not exist; use one of "
                f"{', '.join(names[:-1][:12])}{', ...' if len(names) > 13 else ''}"
            )
    cuts = sorted(names.index(point) + 1 for point in set(exits))
    was_training = model.training
    with eval_mode(model), torch.no_grad():
        expected = call_model(model, inputs)
        features, x = [], inputs
        for index, (_, module) in enumerate(chain):
            x = module(x)
            if index + 1 in cuts:
                features.append(x)
    if x.shape != expected.shape or not torch.allclose(x, expected, atol=1e-5):
        raise UnsupportedError(
            "early exit needs a model whose forward applies its children in order "
            "(like nn.Sequential); wrap your trunk in nn.Sequential modules"
        )
    num_classes = num_classes or int(expected.shape[-1])
    bounds = [0, *cuts, len(chain)]
    segments = [
        nn.Sequential(*[module for _, module in chain[start:end]])
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    heads = [_head(feature, num_classes, head_pool) for feature in features]
    ordered = [names[cut - 1] for cut in cuts]
    return EarlyExitModel(segments, heads, ordered, threshold).train(was_training)


def train_exits(
    model: EarlyExitModel,
    task: Task,
    epochs: int,
    mode: str = "joint",
    exit_weight: float = 1.0,
    lr: float | None = None,
    temperature: float = 4.0,
) -> None:
    """Train the exit heads: ``joint`` (all weights, CE on every head) or ``distill``.

    ``distill`` freezes the trunk and final head and trains each exit head on KD from
    the final head's logits (plus hard labels), so the final accuracy is unchanged.
    """
    if mode not in EXIT_MODES:
        raise ConfigError(f"early-exit mode {mode!r} is unknown; use one of {EXIT_MODES}")
    frozen = []
    if mode == "distill":
        for param in model.segments.parameters():
            if param.requires_grad:
                param.requires_grad_(False)
                frozen.append(param)

    def objective(module: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = split_batch(batch)
        if mode == "distill":
            model.segments.eval()  # keep BatchNorm statistics of the frozen trunk
        outputs = model.forward_all(inputs)
        final = outputs[-1]
        if mode == "joint":
            loss = task.loss(final, target)
            for logits in outputs[:-1]:
                loss = loss + exit_weight * task.loss(logits, target)
            return loss
        return sum(hinton_loss(o, final.detach(), target, temperature, 0.5) for o in outputs[:-1])

    try:
        task.fit(model, epochs=epochs, lr=lr, objective=objective, progress=False)
    finally:
        for param in frozen:
            param.requires_grad_(True)
        model.eval()


# ------------------------------------------------------------------ measuring


def path_macs(model: EarlyExitModel, inputs: Any) -> list[int]:
    """MACs of the path to each exit (earlier heads included), measured with count_macs."""
    macs = []
    try:
        for index in range(len(model.heads) + 1):
            model.forced_exit = index
            macs.append(count_macs(model, inputs).macs)
    finally:
        model.forced_exit = None
    return macs


class _SampleLoop(nn.Module):
    """Runs a model on each sample at batch 1 (so batch-1 latency averages over data)."""

    def __init__(self, model: nn.Module, threshold: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            self.model.threshold = self.threshold
        return torch.stack([self.model(x[i : i + 1])[0] for i in range(x.shape[0])])


def sweep_thresholds(
    model: EarlyExitModel,
    task: Task,
    thresholds: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01),
    baseline: nn.Module | None = None,
    split: str = "test",
    latency: bool = True,
    latency_samples: int = 32,
) -> list[dict[str, Any]]:
    """Metric, exit fractions, average MACs per sample and batch-1 latency per threshold.

    Average MACs weight each exit path's measured MACs by the fraction of samples that
    took it. Latency runs ``latency_samples`` test samples one at a time, interleaved
    with the ``baseline`` (if given), and reports the mean per sample.
    """
    if not thresholds:
        raise ConfigError("sweep_thresholds needs at least one threshold")
    model.eval()
    costs = path_macs(model, task.inputs(1))
    rows = []
    for threshold in thresholds:
        model.threshold = float(threshold)
        model.exit_counts = [0] * len(costs)
        metric = task.evaluate(model, split)
        total = sum(model.exit_counts)
        fractions = [count / total for count in model.exit_counts]
        rows.append(
            {
                "threshold": float(threshold),
                task.metric_name: metric,
                "exit_fractions": [round(f, 4) for f in fractions],
                "avg_macs": sum(f * c for f, c in zip(fractions, costs, strict=True)),
                "path_macs": costs,
            }
        )
    if latency:
        samples = task.inputs(latency_samples)
        loops = [_SampleLoop(model, t) for t in thresholds]
        if baseline is not None:
            loops.append(_SampleLoop(baseline))
        stats = benchmark_latency(loops, samples, warmup=2, target_seconds=0.5)
        for row, stat in zip(rows, stats, strict=False):
            row["latency_ms_batch_1"] = stat.median_ms / latency_samples
        if baseline is not None:
            for row in rows:
                row["baseline_latency_ms_batch_1"] = stats[-1].median_ms / latency_samples
    if baseline is not None:
        base_macs = count_macs(baseline, task.inputs(1)).macs
        for row in rows:
            row["baseline_macs"] = base_macs
            row["macs_saving"] = 1 - row["avg_macs"] / base_macs
    model.threshold = float(thresholds[-1])
    return rows


# ------------------------------------------------------------------ configs


@register_config
@dataclass(frozen=True)
class EarlyExit(TechniqueConfig):
    """Add early-exit heads and train them.

    Args:
        exits: exit point names (e.g. ``features.6``); empty: after every pooling stage
            (or activation) but the last.
        threshold: softmax confidence at which a sample leaves, in [0, 1] (1: never early).
        epochs: training epochs for the heads (0: untrained heads).
        mode: ``joint`` (all weights, CE on every head) or ``distill`` (frozen trunk, KD
            from the final head).
        exit_weight: weight of each exit head's loss in ``joint`` mode (>= 0).
        head_pool: adaptive pooling size before each exit head's Linear (>= 1).
        lr: learning rate; None uses the task's.
    """

    name = "early_exit"
    family = "dynamic"
    exits: tuple[str, ...] = ()
    threshold: float = 0.9
    epochs: int = 5
    mode: str = "distill"
    exit_weight: float = 1.0
    head_pool: int = 2
    lr: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"early_exit.threshold must be in [0, 1], got {self.threshold}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"early_exit.epochs must be an integer >= 0, got {self.epochs!r}")
        if self.mode not in EXIT_MODES:
            raise ConfigError(f"early_exit.mode {self.mode!r} is unknown; use {EXIT_MODES}")
        if self.exit_weight < 0:
            raise ConfigError(f"early_exit.exit_weight must be >= 0, got {self.exit_weight}")
        if not isinstance(self.head_pool, int) or self.head_pool < 1:
            raise ConfigError(f"early_exit.head_pool must be an integer >= 1, got {self.head_pool}")
        check_lr(self.name, self.lr)


@register_handler(EarlyExit)
def _early_exit(model: nn.Module, config: EarlyExit, context: ApplyContext) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("early_exit needs a task (example inputs and data); pass task=")
    wrapped = build_early_exit(
        model, task.inputs(2), config.exits, head_pool=config.head_pool, threshold=config.threshold
    )
    if config.epochs:
        train_exits(wrapped, task, config.epochs, config.mode, config.exit_weight, config.lr)
    context.notes["early_exit"] = {
        "exits": wrapped.exits,
        "path_macs": path_macs(wrapped, task.inputs(1)),
    }
    return wrapped.eval()


# ------------------------------------------------------------------ gated branches


class GatedBranches(nn.Module):
    """A block whose gate picks, per input, which branch to compute.

    Training: a softmax-weighted mixture of every branch (differentiable). Inference:
    each sample computes only its highest-scoring branch; the others are skipped.
    ``nn.Identity`` is a valid branch (skip the block). Branches share output shapes.

    Args:
        branches: the alternatives.
        channels: input channels (dim 1) the gate reads after global average pooling.
        prefer: index of the branch the gate initially prefers (the original block).
    """

    input_dependent_macs = True  # measure.model_macs averages its MACs over the data

    def __init__(self, branches: Sequence[nn.Module], channels: int, prefer: int = 0) -> None:
        super().__init__()
        if len(branches) < 2:
            raise ConfigError("a gated block needs at least two branches")
        self.branches = nn.ModuleList(branches)
        self.gate = nn.Linear(channels, len(branches))
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.zero_()
            self.gate.bias[prefer] = 3.0
        self.branch_counts = [0] * len(branches)

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample branch scores from globally pooled features."""
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return self.gate(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate_logits(x), dim=-1)
        if self.training:
            return sum(probs[:, b].view(-1, *[1] * (x.dim() - 1)) * branch(x)
                       for b, branch in enumerate(self.branches))  # fmt: skip
        choice = probs.argmax(dim=-1)
        output: torch.Tensor | None = None
        for index, branch in enumerate(self.branches):
            chosen = (choice == index).nonzero().flatten()
            if chosen.numel() == 0:
                continue
            self.branch_counts[index] += int(chosen.numel())
            result = branch(x[chosen])
            if output is None:
                output = result.new_zeros(x.shape[0], *result.shape[1:])
            output[chosen] = result
        assert output is not None
        return output


@register_config
@dataclass(frozen=True)
class GatedSkip(TechniqueConfig):
    """Wrap shape-preserving blocks in a gate that may skip them per input.

    Args:
        scope: which blocks (must keep their input shape; others are left alone).
        epochs: training epochs for gates and blocks (>= 0).
        cost_weight: penalty on the probability of computing a block (>= 0).
    """

    name = "gated_skip"
    family = "dynamic"
    scope: Scope = Scope()
    epochs: int = 3
    cost_weight: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"gated_skip.epochs must be an integer >= 0, got {self.epochs!r}")
        if self.cost_weight < 0:
            raise ConfigError(f"gated_skip.cost_weight must be >= 0, got {self.cost_weight}")


@register_handler(GatedSkip)
def _gated_skip(model: nn.Module, config: GatedSkip, context: ApplyContext) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("gated_skip needs a task (example inputs and data); pass task=")
    config.scope.check_known(model)
    inputs = task.inputs(2)
    shapes: dict[str, tuple[tuple, tuple]] = {}
    candidates = [(n, m) for n, m in config.scope.select(model) if config.scope.include]
    hooks = [
        m.register_forward_hook(
            lambda mod, a, o, n=n: shapes.__setitem__(n, (tuple(a[0].shape), tuple(o.shape)))
        )
        for n, m in candidates
    ]
    with torch.no_grad():
        call_model(model.eval(), inputs)
    for hook in hooks:
        hook.remove()
    gated = []
    for name, module in candidates:
        if name not in shapes or shapes[name][0] != shapes[name][1] or len(shapes[name][0]) < 2:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, GatedBranches([module, nn.Identity()], shapes[name][0][1]))
        gated.append(name)
    if not gated:
        raise ConfigError("gated_skip found no shape-preserving block in scope; name blocks")
    gates = [m for m in model.modules() if isinstance(m, GatedBranches)]

    def objective(module: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = split_batch(batch)
        penalty = []
        handles = [
            g.register_forward_hook(
                lambda m, a, o: penalty.append(F.softmax(m.gate_logits(a[0]), -1)[:, 0].mean())
            )
            for g in gates
        ]
        try:
            loss = task.loss(call_model(module, inputs), target)
        finally:
            for handle in handles:
                handle.remove()
        return loss + config.cost_weight * torch.stack(penalty).mean()

    if config.epochs:
        task.fit(model, epochs=config.epochs, objective=objective, progress=False)
    context.notes["gated_skip"] = {"blocks": gated}
    return copy.deepcopy(model).eval()
