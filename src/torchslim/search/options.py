"""``OptimizeOptions``: every setting of one :func:`~torchslim.search.optimize` run.

One frozen dataclass, validated when it is made (a one-line :class:`ConfigError` per bad
field), so a run fails before anything trains. ``optimize(task, max_drop=1.0, **fields)``
builds one from keyword arguments; ``optimize(task, options)`` takes one as is (both warn
once about a budget under 0.1 points, most likely a fraction). ``None`` in a training
field means the compute-bounded default of :mod:`torchslim.search.defaults`; the values a
run used are written to ``results.json`` under ``"options"``
(:meth:`OptimizeOptions.to_dict`, read back by :meth:`OptimizeOptions.from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchslim.errors import ConfigError
from torchslim.search.budget import Budget, Objective
from torchslim.search.space import RECOVERIES
from torchslim.search.storage_url import display_url

AUTO = "auto"
"""``strategy="auto"``: optuna when a storage, a study or a trial count is given, else greedy."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(name: str, value: Any, least: int) -> None:
    if value is not None and (not _is_int(value) or value < least):
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class OptimizeOptions:
    """The settings of an optimization (see :func:`torchslim.search.optimize`).

    Attributes:
        max_drop: the budget in points: ``1.0`` = 1 percentage point of accuracy when
            absolute, 1 % of the baseline when relative.
        drop_type: ``"absolute"`` or ``"relative"``.
        objective: ``"size"`` (artifact bytes), ``"macs"`` or ``"latency"``.
        runtime, batch: latency runtime (``torch`` / ``onnxruntime``) and batch size.
        strategy: a registered search strategy (``greedy``, ``optuna``; see
            :func:`torchslim.search.strategies.register_strategy`) or ``"auto"`` (optuna
            when a storage, study or trial count is given, else greedy).
        techniques: knobs to search (None: by objective and model, see ``optimize``).
        ranges: per-technique grids, e.g. ``{"codebook_quant": (8, 4, 3)}``.
        trials: greedy verifications / finished Optuna trials (None: the strategy's default,
            12 / 30, fewer on large tasks: :mod:`torchslim.search.defaults`).
        time_limit: seconds from the start after which no new candidate is verified (None:
            25 minutes when ``trials`` is None too, else no limit).
        storage: Optuna storage URL (None: in memory).
        study: study name (None: derived from the task's fingerprint).
        out: folder for results.json, report.html, the best recipe and its artifact.
        recovery_epochs: recovery after pruning (None: the compute-bounded default).
        codebook_epochs: centroid fine-tuning of codebook quantization (None: half of
            the recovery epochs, at least 1; none when recovery is 0).
        recovery: ``"distill"`` (default) or ``"finetune"``.
        recovery_lr: recovery learning rate (None: the step's default).
        sensitivity_epochs: recovery before each sensitivity point (None: the default).
        margin: fraction of the budget held back on the val split, in [0, 1).
        multi_objective: NSGA-II on (cost, drop); False: TPE on cost, budget as constraint.
        seed: sampler seed (None: random).
        threads: intra-op threads while timing.
        progress: show progress bars.
        latency: time the final candidate against the baseline (always for latency).
        heartbeat: seconds between a stored study's trial heartbeats (None: 10).
    """

    max_drop: float = 1.0
    drop_type: str = "absolute"
    objective: str = "size"
    runtime: str = "torch"
    batch: int = 1
    strategy: str = AUTO
    techniques: tuple[str, ...] | None = None
    ranges: Mapping[str, tuple[float, ...]] | None = None
    trials: int | None = None
    time_limit: float | None = None
    storage: str | None = None
    study: str | None = None
    out: str | None = None
    recovery_epochs: int | None = None
    codebook_epochs: int | None = None
    recovery: str = "distill"
    recovery_lr: float | None = None
    sensitivity_epochs: int | None = None
    margin: float = 0.25
    multi_objective: bool = True
    seed: int | None = 0
    threads: int = 1
    progress: bool = True
    latency: bool = True
    heartbeat: int | None = None

    def __post_init__(self) -> None:
        Budget(self.max_drop, self.drop_type)  # validates both
        Objective(self.objective, self.runtime, self.batch)  # validates all three
        self._check_strategy()
        _check_count("trials", self.trials, 1)
        if self.time_limit is not None and not (
            isinstance(self.time_limit, (int, float))
            and not isinstance(self.time_limit, bool)
            and math.isfinite(self.time_limit)
            and self.time_limit > 0
        ):
            raise ConfigError(
                f"time limit must be a positive number of seconds, got {self.time_limit!r}"
            )
        if self.recovery not in RECOVERIES:
            raise ConfigError(f"recovery {self.recovery!r} is unknown; use one of {RECOVERIES}")
        if self.sensitivity_epochs is not None and (
            not _is_int(self.sensitivity_epochs) or self.sensitivity_epochs < 0
        ):
            raise ConfigError(
                f"sensitivity epochs must be an integer >= 0, got {self.sensitivity_epochs!r}"
            )
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ConfigError(f"margin is a fraction of the budget in [0, 1), got {margin!r}")
        _check_count("recovery epochs", self.recovery_epochs, 0)
        _check_count("codebook epochs", self.codebook_epochs, 0)
        _check_count("threads", self.threads, 1)
        _check_count("heartbeat", self.heartbeat, 1)
        if self.techniques is not None:
            if isinstance(self.techniques, str) or not isinstance(self.techniques, Sequence):
                raise ConfigError(
                    f"techniques must be a list of names, got {self.techniques!r}; "
                    "e.g. ['magnitude_pruning']"
                )
            object.__setattr__(self, "techniques", tuple(self.techniques))
            if not self.techniques:
                raise ConfigError("the list of techniques is empty; name at least one")
        if self.ranges is not None:
            if not isinstance(self.ranges, Mapping):
                raise ConfigError(
                    f"ranges must map a technique to its values, got {self.ranges!r}; "
                    "e.g. {'codebook_quant': [8, 4]}"
                )
            object.__setattr__(
                self, "ranges", {str(k): tuple(v) for k, v in sorted(self.ranges.items())}
            )
        if self.out is not None:
            object.__setattr__(self, "out", str(self.out))
        if self.strategy_name() != "optuna" and self.storage is not None:
            raise ConfigError("--storage applies to the optuna strategy; pass --strategy optuna")

    def _check_strategy(self) -> None:
        from torchslim.search.strategies import strategy_names

        names = (AUTO, *strategy_names())
        if self.strategy not in names:
            raise ConfigError(f"strategy {self.strategy!r} is unknown; use one of {names}")

    @property
    def budget(self) -> Budget:
        """The accuracy budget."""
        return Budget(self.max_drop, self.drop_type)

    @property
    def goal(self) -> Objective:
        """The objective (kind, runtime, batch)."""
        return Objective(self.objective, self.runtime, self.batch)

    def strategy_name(self) -> str:
        """The strategy that runs: ``auto`` resolved (optuna with a storage, study or trials)."""
        if self.strategy != AUTO:
            return self.strategy
        return "optuna" if (self.storage or self.study or self.trials) else "greedy"

    def replace(self, **changes: Any) -> OptimizeOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: every field, a storage URL without its password."""
        data = dataclasses.asdict(self)
        data["techniques"] = list(self.techniques) if self.techniques is not None else None
        data["ranges"] = (
            {k: [float(v) for v in values] for k, values in self.ranges.items()}
            if self.ranges is not None
            else None
        )
        if self.storage is not None:
            data["storage"] = display_url(self.storage)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeOptions:
        """Options from :meth:`to_dict` data (e.g. ``results.json["options"]``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"options have no field {unknown[0]!r}; fields: {', '.join(sorted(names))}"
            )
        return cls(**dict(data))


def as_options(options: OptimizeOptions | float | None, fields: dict[str, Any]) -> OptimizeOptions:
    """The options of an ``optimize`` call: ``options`` (a number is ``max_drop``) updated
    with keyword ``fields``.

    Raises:
        ConfigError: an unknown keyword (naming the fields), or a bad value.
    """
    names = {f.name for f in dataclasses.fields(OptimizeOptions)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ConfigError(
            f"optimize() has no option {unknown[0]!r}; options: {', '.join(sorted(names))}"
        )
    if options is not None and not isinstance(options, OptimizeOptions):
        if "max_drop" in fields:
            raise ConfigError("max_drop is given twice; pass it once")
        fields = {**fields, "max_drop": options}
    if isinstance(options, OptimizeOptions):
        budget = Budget(
            fields.get("max_drop", options.max_drop), fields.get("drop_type", options.drop_type)
        )
    else:
        budget = Budget(fields.get("max_drop", 1.0), fields.get("drop_type", "absolute"))
    small = budget.small_budget_warning()
    if small:  # said when the budget is read, before any other check or training
        warnings.warn(small, UserWarning, stacklevel=3)
    if isinstance(options, OptimizeOptions):
        return options.replace(**fields) if fields else options
    return OptimizeOptions(**fields)
