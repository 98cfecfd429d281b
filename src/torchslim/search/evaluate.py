"""Evaluate one candidate: its recipe through the pipeline, its metric on the val split.

Every candidate of every strategy goes through :func:`torchslim.pipeline.run_recipe`,
so it is measured the same way (a real artifact's bytes, counted MACs, timed latency)
and has a re-runnable recipe. The search decides on the validation metric only; the
test metric of the same model is recorded for the final acceptance check.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.measure import Footprint, measure
from torchslim.pipeline import run_recipe
from torchslim.recipe import Export, Recipe
from torchslim.report.results import Candidate
from torchslim.search.budget import Budget, Objective
from torchslim.search.sensitivity import split_loss
from torchslim.search.space import (
    GLOBAL,
    LATENCY_ROUND_TO,
    Allocation,
    Space,
    allocation_key,
    build_recipe,
    recovery_kd,
)

if TYPE_CHECKING:
    from torchslim.task import Task

Monitor = Callable[[float, int, int], bool]
"""``monitor(val_drop, epoch, epochs) -> stop``: called after a watched recovery epoch."""


@dataclass(frozen=True)
class EarlyStop:
    """When a candidate's recovery is hopeless, whatever the recovery step is called.

    Any recipe step whose config has ``role == "recovery"`` (fine-tuning, distillation)
    is watched: from half of its epochs on, the val drop is measured after each epoch
    (with the RNG state put back, so watching does not change the training). The drop
    is hopeless above ``factor`` times the allowed drop, scaled by ``epochs / epoch``:
    4x the budget halfway, 2x after the last epoch. Later steps (quantization) only lose
    more, so such a candidate cannot meet the budget and its training is cut short.
    """

    factor: float = 2.0

    def watches(self, epoch: int, epochs: int) -> bool:
        """Whether the drop is measured after this epoch (from half of them on)."""
        return 2 * epoch >= epochs

    def threshold(self, limit: float, epoch: int, epochs: int) -> float:
        """The largest drop (metric units) that is not hopeless after ``epoch``."""
        return self.factor * limit * epochs / max(epoch, 1)

    def hopeless(self, drop: float, limit: float, epoch: int, epochs: int) -> bool:
        """Whether a val drop after ``epoch`` of ``epochs`` cannot reach ``limit``."""
        return drop > self.threshold(limit, epoch, epochs) + 1e-9


class StopTrial(Exception):
    """Raised during a candidate's recovery to stop it (it cannot meet the budget)."""

    def __init__(
        self, message: str, drop: float, epoch: int = 0, epochs: int = 0, step: str = ""
    ) -> None:
        super().__init__(message)
        self.drop = drop
        self.epoch = epoch
        self.epochs = epochs
        self.step = step


@dataclass
class Stopped:
    """A candidate whose recovery was stopped early.

    Attributes:
        name: the candidate's name.
        allocation: its per-layer settings.
        drop: its val drop when stopped (metric units).
        epoch, epochs: the recovery epochs trained, of those the recipe asks.
        step: the recovery step's name (``distill``, ``finetune``, ...).
    """

    name: str
    allocation: Allocation
    drop: float
    epoch: int
    epochs: int
    step: str

    def note(self) -> str:
        """One line for the report."""
        return (
            f"{self.name} stopped early after recovery epoch {self.epoch} of {self.epochs} "
            f"({self.step}): val drop {self.drop:.4f}, hopeless"
        )


@dataclass
class Record:
    """One evaluated candidate.

    Attributes:
        name: its name in the report.
        allocation: the per-layer settings.
        val_metric: the metric on the validation split (what the search sees).
        test_metric: the metric of the same model on the test split (only for acceptance).
        ratio: objective cost over the baseline's (lower is better).
        candidate: the pipeline's candidate (footprint measured on the val split).
        val_loss: the task's mean loss on the val split (None when not measured).
    """

    name: str
    allocation: Allocation
    val_metric: float
    test_metric: float
    ratio: float
    candidate: Candidate
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in Optuna trial attributes)."""
        return {
            "name": self.name,
            "allocation": self.allocation,
            "val_metric": self.val_metric,
            "test_metric": self.test_metric,
            "ratio": self.ratio,
            "seconds": self.seconds,
            "val_loss": self.val_loss,
            "candidate": self.candidate.to_dict(self.candidate.footprint),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            allocation=data["allocation"],
            val_metric=data["val_metric"],
            test_metric=data["test_metric"],
            ratio=data["ratio"],
            candidate=Candidate.from_dict(data["candidate"]),
            seconds=data.get("seconds", 0.0),
            val_loss=data.get("val_loss"),
        )


class Evaluator:
    """Runs candidates against one baseline, measured once on the val split.

    Args:
        task: the task.
        baseline: its trained baseline (never modified).
        space: the knobs (for building recipes).
        budget, objective: what counts as good.
        recovery_epochs: fine-tuning epochs after pruning.
        codebook_epochs: centroid fine-tuning epochs of codebook quantization.
        threads: intra-op threads while timing.
        recovery: ``"finetune"`` or ``"distill"`` (from the baseline) after pruning.
        recovery_lr: its learning rate (None: the step's default).
        margin: fraction of the budget held back on the val split: the search calls a
            candidate feasible when its val drop is within ``(1 - margin)`` of the budget,
            so that the held-out test check (a different sample) passes more often.
    """

    def __init__(
        self,
        task: Task,
        baseline: nn.Module,
        space: Space,
        budget: Budget,
        objective: Objective,
        recovery_epochs: int,
        codebook_epochs: int,
        threads: int = 1,
        recovery: str = "finetune",
        recovery_lr: float | None = None,
        margin: float = 0.0,
    ) -> None:
        self.task = task
        self.baseline = baseline
        self.space = space
        self.budget = budget
        self.objective = objective
        self.recovery_epochs = recovery_epochs
        self.codebook_epochs = codebook_epochs
        self.threads = threads
        self.recovery = recovery
        self.recovery_lr = recovery_lr
        self.margin = margin
        self.loss_cap: float | None = None  # set by greedy refinement (see ``meets``)
        self.base_val: Footprint = measure(
            baseline, task, split="val", latency=objective.needs_latency, **self.timing()
        )
        self.records: dict[str, Record] = {}
        self.deployed_misses: list[str] = []  # candidates whose deployed file scored less
        self.early_stop = EarlyStop()
        self.stopped: list[Stopped] = []  # candidates whose recovery was stopped early
        self._stopped: dict[Any, StopTrial] = {}
        # deployed ONNX files are kept for a latency search on ONNX Runtime, so that the
        # finalists can be timed together (see optimize.retime_finalists)
        self.keep = (
            tempfile.TemporaryDirectory(prefix="torchslim-search-")
            if objective.needs_latency and objective.runtime == "onnxruntime"
            else None
        )

    def close(self) -> None:
        """Delete the kept deployed files."""
        if self.keep is not None:
            self.keep.cleanup()
            self.keep = None

    def timing(self) -> dict[str, Any]:
        runtime = self.objective.runtime
        if runtime == "onnxruntime":
            runtime = "torch"  # eager baseline; int8 candidates are deployed to ORT and compared
        return {
            "runtime": runtime,
            "threads": self.threads,
            "batch_n": max(2, self.objective.batch),
        }

    @property
    def limit(self) -> float:
        """The allowed drop in metric units, from the val baseline."""
        return self.budget.limit(self.base_val.metric)

    @property
    def search_limit(self) -> float:
        """The drop the search aims at on val: the budget less the safety margin."""
        return self.limit * (1.0 - self.margin)

    def recipe(self, allocation: Allocation, name: str) -> Recipe:
        """The recipe of an allocation with this evaluator's recovery settings."""
        recipe = build_recipe(
            allocation,
            name,
            self.task.source or self.task.name,
            self.recovery_epochs,
            self.codebook_epochs,
            self.recovery,
            self.recovery_lr,
            recovery_kd(self.task.train_config.optimizer),
            LATENCY_ROUND_TO if self.objective.kind == "latency" else None,
        )
        if self.objective.needs_latency and self.objective.runtime == "onnxruntime":
            int8 = bool(allocation.get("static_quant", {}).get(GLOBAL))
            recipe.export = Export("onnx-int8" if int8 else "onnx")
        return recipe

    def evaluate(self, allocation: Allocation, name: str, monitor: Monitor | None = None) -> Record:
        """Run the allocation's recipe, measure it on val (and the test metric), keep it.

        With a ``monitor``, each watched recovery epoch (see :class:`EarlyStop`) reports
        the val drop to it; when it answers True the candidate is stopped: it is added to
        :attr:`stopped` and :class:`StopTrial` is raised (again for the same settings).
        """
        key = allocation_key(allocation)
        if key in self.records:
            return self.records[key]
        if monitor is not None and key in self._stopped:
            raise self._stopped[key]
        recipe = self.recipe(allocation, name)
        start = time.perf_counter()
        try:
            run = self._run(recipe, name, monitor)
        except StopTrial as exc:
            self._stopped[key] = exc
            self.stopped.append(
                Stopped(name, allocation, exc.drop, exc.epoch, exc.epochs, exc.step)
            )
            raise
        return self._record(allocation, name, run, start, key)

    def stop_hopeless(self, drop: float, epoch: int, epochs: int) -> bool:
        """The default monitor: stop when :class:`EarlyStop` calls the drop hopeless."""
        return self.early_stop.hopeless(drop, self.limit, epoch, epochs)

    def _watch(self, monitor: Monitor) -> Callable[[Any, nn.Module, int], None]:
        """The pipeline's epoch hook: reports watched recovery epochs to ``monitor``."""

        def on_epoch(config: Any, model: nn.Module, epoch: int) -> None:
            if getattr(config, "role", "") != "recovery":
                return
            epochs = int(getattr(config, "epochs", epoch))
            if not self.early_stop.watches(epoch, epochs):
                return
            drop = self.base_val.metric - self.task.evaluate(model, "val")
            if monitor(drop, epoch, epochs):
                raise StopTrial(
                    f"val drop {drop:.4f} after recovery epoch {epoch} of {epochs} ({config.name})",
                    drop,
                    epoch,
                    epochs,
                    config.name,
                )

        return on_epoch

    def _run(self, recipe: Recipe, name: str, monitor: Monitor | None) -> Any:
        return run_recipe(
            recipe,
            self.task,
            baseline=self.baseline,
            baseline_footprint=self.base_val,
            name=name,
            latency=self.objective.needs_latency,
            split="val",
            on_epoch=self._watch(monitor) if monitor is not None else None,
            out=Path(self.keep.name) / f"c{len(self.records)}" if self.keep else None,
            # an onnxruntime objective compares the deployed model's latency only
            eager_latency=self.objective.runtime != "onnxruntime",
            **self.timing(),
        )

    def _record(
        self, allocation: Allocation, name: str, run: Any, start: float, key: Any
    ) -> Record:
        test_metric = self.task.evaluate(run.model, "test")
        if run.deployed is not None:  # the deployed file is what ships: judge by the worse
            test_metric = min(test_metric, self.task.evaluate(run.deployed, "test"))
            gap = run.candidate.deployed_gap()
            if gap is not None and gap > self.limit:
                self.deployed_misses.append(
                    f"{name}: its deployed ONNX Runtime file scores {gap:.4f} below its "
                    "simulation on val; judged by the deployed metric"
                )
        record = Record(
            name=name,
            allocation=allocation,
            val_metric=run.candidate.shipped_metric(),
            test_metric=test_metric,
            ratio=self.objective.ratio(run.candidate, self.base_val),
            candidate=run.candidate,
            seconds=time.perf_counter() - start,
            val_loss=split_loss(self.task, run.model, "val"),
        )
        self.records[key] = record
        return record

    def meets(self, record: Record, margin: bool = True) -> bool:
        """Whether a record meets the budget on the val split.

        With ``margin`` (the default), the drop must stay within :attr:`search_limit`
        and, once greedy refinement has set :attr:`loss_cap`, the val loss within it too.
        """
        drop = self.budget.drop(self.base_val.metric, record.val_metric)
        if not margin:
            return drop <= self.limit + 1e-12
        if (
            self.loss_cap is not None
            and record.val_loss is not None
            and record.val_loss > self.loss_cap + 1e-9
        ):
            return False
        return drop <= self.search_limit + 1e-12
