"""The results contract (``results.json``): a baseline, candidates, the best, the budget.

Keys (stable; documented in docs/architecture.md)::

    {"task": str, "metric_name": str,
     "baseline": {footprint},
     "candidates": [{footprint, "name", "techniques", "metric_drop", "size_ratio",
                     "params_ratio", "macs_ratio", "speedup": {"batch_1", "batch_N"},
                     "simulated", "train_seconds", "recipe", "history", "deployed"}],
     "best": str | null, "budget": {"max_drop", "drop_type"} | null}

Extra optional keys: ``pareto`` (candidate names on the front), ``sensitivity``
(curves per layer), ``notes`` (free text lines), ``hardware`` (the machine that measured
the run: :func:`torchslim.hardware.machine_record`), ``gap_flagged`` (candidates whose
deployed metric falls below their simulated one by more than :meth:`Report.gap_limit`);
per candidate ``deployed_gap`` (simulated metric minus deployed metric, metric units;
null when nothing was deployed).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError
from torchslim.measure import Footprint, compare

RESULTS_VERSION = 1


@dataclass
class Candidate:
    """One compressed model: its measured footprint, how it was made, and its history.

    Args:
        name: unique label in the report.
        techniques: technique names applied, in order.
        footprint: the measured footprint of the candidate's artifact.
        recipe: the re-runnable recipe (``Recipe.to_dict()``).
        train_seconds: training / fine-tuning time spent making it.
        history: one entry per recipe step (metric and sizes after the step).
        deployed: the footprint of the deployed artifact (e.g. ONNX Runtime int8) when
            ``footprint`` is a simulation; shown side by side.
        deployed_reference: the fp32 model measured on the deployed artifact's runtime,
            so that its speedup compares like with like.
        layers: per-layer details for charts, e.g. ``{"fc1": {"sparsity": 0.8, "bits": 4}}``.
        origin: which study worker made it (``{"worker": "host:pid", "host", "trial"}``)
            when it comes from a shared Optuna study, else None.
    """

    name: str
    techniques: list[str]
    footprint: Footprint
    recipe: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    deployed: Footprint | None = None
    deployed_reference: Footprint | None = None
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    origin: dict[str, Any] | None = None

    def deployed_gap(self) -> float | None:
        """Simulated metric minus the deployed artifact's (metric units; None if not deployed).

        Positive when the deployed file scores less than its simulation said."""
        if self.deployed is None:
            return None
        return float(self.footprint.metric) - float(self.deployed.metric)

    def shipped_metric(self) -> float:
        """The metric a budget is checked against: the deployed artifact's when it scores
        less than the simulation, else the candidate's own."""
        gap = self.deployed_gap()
        if gap is not None and gap > 0:
            return float(self.deployed.metric)  # type: ignore[union-attr]
        return float(self.footprint.metric)

    def deployed_speedup(self) -> dict[str, float]:
        """Deployed artifact's speedup over the fp32 model on the same runtime."""
        if self.deployed is None or self.deployed_reference is None:
            return {}
        return compare(self.deployed_reference, self.deployed).speedup

    def to_dict(self, baseline: Footprint) -> dict[str, Any]:
        ratio = compare(baseline, self.footprint)
        data = self.footprint.to_dict()
        data.update(
            {
                "name": self.name,
                "techniques": list(self.techniques),
                "metric_drop": ratio.metric_drop,
                "size_ratio": ratio.size_ratio,
                "params_ratio": ratio.params_ratio,
                "macs_ratio": ratio.macs_ratio,
                "speedup": {k: ratio.speedup.get(k) for k in ("batch_1", "batch_N")},
                "simulated": self.footprint.simulated,
                "train_seconds": round(self.train_seconds, 3),
                "recipe": self.recipe,
                "history": self.history,
                "deployed": self.deployed.to_dict(per_layer=False) if self.deployed else None,
                "deployed_reference": (
                    self.deployed_reference.to_dict(per_layer=False)
                    if self.deployed_reference
                    else None
                ),
                "deployed_speedup": self.deployed_speedup() or None,
                "deployed_gap": self.deployed_gap(),
                "layers": self.layers,
                "origin": self.origin,
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        footprint_keys = set(Footprint.__dataclass_fields__)
        footprint = Footprint.from_dict({k: v for k, v in data.items() if k in footprint_keys})
        deployed = data.get("deployed")
        reference = data.get("deployed_reference")
        return cls(
            name=data["name"],
            techniques=list(data.get("techniques", [])),
            footprint=footprint,
            recipe=data.get("recipe", {}),
            train_seconds=data.get("train_seconds", 0.0),
            history=data.get("history", []),
            deployed=Footprint.from_dict(deployed) if deployed else None,
            deployed_reference=Footprint.from_dict(reference) if reference else None,
            layers=data.get("layers", {}),
            origin=data.get("origin"),
        )


@dataclass
class Report:
    """Everything a run measured, ready for JSON, the terminal table and the HTML page."""

    task: str
    metric_name: str
    baseline: Footprint
    candidates: list[Candidate] = field(default_factory=list)
    best: str | None = None
    budget: dict[str, Any] | None = None
    pareto: list[str] = field(default_factory=list)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hardware: dict[str, Any] | None = None
    options: dict[str, Any] | None = None

    def candidate(self, name: str) -> Candidate:
        """The candidate called ``name``."""
        for item in self.candidates:
            if item.name == name:
                return item
        raise ConfigError(
            f"no candidate named {name!r}; names: {[c.name for c in self.candidates]}"
        )

    def gap_limit(self) -> float:
        """How far a deployed metric may fall below its simulation before it is flagged:
        the budget's allowed drop (metric units), or one point without a budget."""
        if not self.budget:
            return 0.01
        if self.budget.get("drop_type", "absolute") == "relative":
            return float(self.budget["max_drop"]) * abs(self.baseline.metric)
        return float(self.budget["max_drop"])

    def gap_flagged(self, candidate: Candidate) -> bool:
        """Whether the candidate's deployed artifact falls short of its simulation by more
        than :meth:`gap_limit`."""
        gap = candidate.deployed_gap()
        return gap is not None and gap > self.gap_limit() + 1e-12

    def within_budget(self, candidate: Candidate) -> bool:
        """Whether a candidate's metric drop meets the budget (True without a budget); a
        deployed artifact that scores less than the simulation is what counts."""
        if not self.budget:
            return True
        drop = self.baseline.metric - candidate.shipped_metric()
        if self.budget.get("drop_type", "absolute") == "relative":
            drop = drop / self.baseline.metric if self.baseline.metric else math.inf
        return drop <= self.budget["max_drop"] + 1e-12

    def size_front(self) -> list[str]:
        """Names of the candidates on the (metric up, artifact bytes down) Pareto front."""
        front = []
        for c in self.candidates:
            fp = c.footprint
            dominated = any(
                o.footprint.metric >= fp.metric
                and o.footprint.artifact_bytes <= fp.artifact_bytes
                and (
                    o.footprint.metric > fp.metric or o.footprint.artifact_bytes < fp.artifact_bytes
                )
                for o in self.candidates
            )
            if not dominated:
                front.append(c.name)
        return front

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULTS_VERSION,
            "task": self.task,
            "metric_name": self.metric_name,
            "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict(self.baseline) for c in self.candidates],
            "best": self.best,
            "budget": self.budget,
            "pareto": self.pareto,
            "sensitivity": self.sensitivity,
            "notes": self.notes,
            "hardware": self.hardware,
            "gap_flagged": [c.name for c in self.candidates if self.gap_flagged(c)],
            "options": self.options,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        try:
            return cls(
                task=data["task"],
                metric_name=data["metric_name"],
                baseline=Footprint.from_dict(data["baseline"]),
                candidates=[Candidate.from_dict(c) for c in data.get("candidates", [])],
                best=data.get("best"),
                budget=data.get("budget"),
                pareto=data.get("pareto", []),
                sensitivity=data.get("sensitivity", {}),
                notes=data.get("notes", []),
                hardware=data.get("hardware"),
                options=data.get("options"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"results data lacks or mistypes {exc}; pass a results.json written by torchslim"
            ) from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Report:
        """Read a ``results.json``."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"results file {path} does not exist; pass DIR/results.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"results file {path} is not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from exc
        except (RecursionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"results file {path} is not readable JSON ({exc})") from exc
        return cls.from_dict(data)

    def save(self, out: str | os.PathLike[str], html: bool = True) -> Path:
        """Write ``out/results.json`` (and ``out/report.html``); return the JSON path."""
        from torchslim.fileio import write_text_atomic

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        write_text_atomic(path, json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False))
        if html:
            from torchslim.report.html import write_html

            write_html(self, out / "report.html")
        return path


def _finite(value: Any) -> Any:
    """Replace NaN / infinity with null so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
