"""The accuracy budget and the objective of an optimization.

Units: ``max_drop`` is given in *points*. With ``drop_type="absolute"`` a point is a
percentage point of the metric (``max_drop=1.0`` allows accuracy 0.962 -> 0.952, a
drop of 0.01 in metric units); with ``drop_type="relative"`` it is a percent of the
baseline metric (``max_drop=1.0`` allows 0.962 -> 0.962 * 0.99). ``results.json``
stores ``budget.max_drop`` in the metric's own units (0.01 above), the unit that
:meth:`torchslim.report.Report.within_budget` compares with, and the points as given
in ``budget.max_drop_points``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torchslim.errors import ConfigError
from torchslim.report.results import Candidate

DROP_TYPES = ("absolute", "relative")
#: Budgets under this many points get a warning: they are most likely fractions (0.01 for 1 %).
SMALL_BUDGET_POINTS = 0.1
OBJECTIVES = ("size", "macs", "latency")
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Budget:
    """The largest metric drop allowed against the baseline, in points (see module doc).

    Args:
        max_drop: allowed drop in points, in [0, 100].
        drop_type: ``"absolute"`` (percentage points) or ``"relative"`` (percent of baseline).
    """

    max_drop: float = 1.0
    drop_type: str = "absolute"

    def __post_init__(self) -> None:
        if self.drop_type not in DROP_TYPES:
            raise ConfigError(f"drop type {self.drop_type!r} is unknown; use one of {DROP_TYPES}")
        value = self.max_drop
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"max drop must be a finite number of points, got {value!r}")
        if value < 0:
            raise ConfigError(
                f"max drop {value} is negative; give the allowed drop in points, e.g. 1.0"
            )
        if value > 100:
            raise ConfigError(
                f"max drop {value} points exceeds 100 (the budget is in points: 1.0 = 1 point); "
                "pass e.g. --max-drop 1.0"
            )

    def small_budget_warning(self) -> str | None:
        """A warning for a budget in (0, 0.1) points (likely meant as a fraction), else None.

        NNCF and Intel Neural Compressor take the drop as a fraction (0.01 for 1 %); here
        the same 0.01 is a hundredth of a point, which almost no compression can meet.
        """
        if not 0 < self.max_drop < SMALL_BUDGET_POINTS:
            return None
        if self.drop_type == "absolute":
            read = (
                f"{self.max_drop:g} percentage point(s) of the metric "
                f"(a drop of {self.fraction:g} in metric units)"
            )
        else:
            read = f"{self.max_drop:g} % of the baseline metric"
        return (
            f"max drop {self.max_drop:g} is read as {read}, not as a fraction: the budget is "
            "in points; for 1 % write --max-drop 1 (max_drop=1.0)"
        )

    @property
    def fraction(self) -> float:
        """The drop in metric units (absolute) or as a fraction of the baseline (relative)."""
        return float(self.max_drop) / 100.0

    def limit(self, baseline_metric: float) -> float:
        """The largest allowed drop in metric units for this baseline."""
        if self.drop_type == "relative":
            return self.fraction * abs(baseline_metric)
        return self.fraction

    def drop(self, baseline_metric: float, metric: float) -> float:
        """The metric drop in metric units (negative when the candidate is better)."""
        return float(baseline_metric) - float(metric)

    def met(self, baseline_metric: float, metric: float) -> bool:
        """Whether ``metric`` is within budget of ``baseline_metric``."""
        return self.drop(baseline_metric, metric) <= self.limit(baseline_metric) + 1e-12

    def to_dict(self) -> dict[str, Any]:
        """The ``budget`` entry of results.json (``max_drop`` in metric units)."""
        return {
            "max_drop": self.fraction,
            "drop_type": self.drop_type,
            "max_drop_points": float(self.max_drop),
            "unit": "metric units" if self.drop_type == "absolute" else "fraction of baseline",
        }


@dataclass(frozen=True)
class Objective:
    """What the optimizer minimizes: artifact bytes, MACs, or measured latency.

    Args:
        kind: ``"size"`` (bytes of the saved artifact), ``"macs"`` or ``"latency"``.
        runtime: latency runtime, ``"torch"`` or ``"onnxruntime"`` (latency only).
        batch: latency batch size (1 is timed as ``batch_1``; others as ``batch_N``).
    """

    kind: str = "size"
    runtime: str = "torch"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ConfigError(f"objective {self.kind!r} is unknown; use one of {OBJECTIVES}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime {self.runtime!r} is unknown; use one of {RUNTIMES}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"latency batch must be an int >= 1, got {self.batch!r}")

    @property
    def needs_latency(self) -> bool:
        """Whether candidates must be timed."""
        return self.kind == "latency"

    @property
    def latency_key(self) -> str:
        """The latency entry timed for this batch size."""
        return "batch_1" if self.batch == 1 else "batch_N"

    def ratio(self, candidate: Candidate, baseline: Any) -> float:
        """Candidate cost over baseline cost (lower is better; 0.1 = 10x smaller / faster).

        Latency of a candidate deployed to ONNX Runtime int8 is compared with fp32 on
        ONNX Runtime, timed in the same run; otherwise with the baseline's footprint.
        """
        footprint = candidate.footprint
        if self.kind == "size":
            return footprint.artifact_bytes / max(1, baseline.artifact_bytes)
        if self.kind == "macs":
            return footprint.macs / max(1, baseline.macs)
        reference = baseline
        if self.runtime == "onnxruntime" and candidate.deployed is not None:
            footprint, reference = candidate.deployed, candidate.deployed_reference
        key = self.latency_key
        if key not in footprint.latency_ms or key not in reference.latency_ms:
            raise ConfigError(f"latency {key} was not measured; run with latency enabled")
        return footprint.latency_ms[key] / max(1e-9, reference.latency_ms[key])

    def to_dict(self) -> dict[str, Any]:
        """Plain form for results.json notes and study attributes."""
        return {"kind": self.kind, "runtime": self.runtime, "batch": self.batch}
