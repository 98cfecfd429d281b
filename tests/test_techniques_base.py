"""The technique registry, apply(), config round-trips and scope selection."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.techniques import (
    CONFIGS,
    Scope,
    TechniqueConfig,
    apply,
    config_from_dict,
    config_to_dict,
    register_config,
    register_handler,
)


@register_config
@dataclass(frozen=True)
class ScaleWeights(TechniqueConfig):
    """A toy technique for the registry contract: multiply selected weights by a factor."""

    name = "test_scale_weights"
    family = "test"
    factor: float = 0.5
    scope: Scope = Scope()

    def __post_init__(self) -> None:
        if not 0 < self.factor <= 1:
            raise ts.ConfigError(f"factor must be in (0, 1], got {self.factor}")


@register_handler(ScaleWeights)
def scale_of(model, config, context):
    for name, module in config.scope.select(model, (nn.Linear, nn.Conv1d)):
        with torch.no_grad():
            module.weight.mul_(config.factor)
        context.notes.setdefault("scaled", []).append(name)
    return model


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2)
    )


def test_apply_copies_and_dispatches():
    original = model()
    before = [p.clone() for p in original.parameters()]
    out = apply(original, ScaleWeights(factor=0.5, scope=Scope(exclude=("0",))))
    assert all(torch.equal(a, b) for a, b in zip(before, original.parameters(), strict=True))
    assert torch.equal(out[3].weight, original[3].weight * 0.5)
    assert torch.equal(out[0].weight, original[0].weight)


def test_scope_by_name_regex_and_type():
    m = model()
    names = lambda scope: [n for n, _ in scope.select(m, (nn.Linear, nn.Conv1d))]  # noqa: E731
    assert names(Scope()) == ["0", "3", "4"]
    assert names(Scope(include=("re:[34]",))) == ["3", "4"]
    assert names(Scope(exclude=("Conv1d",))) == ["3", "4"]
    assert names(Scope(types=("Conv1d",))) == ["0"]
    with pytest.raises(ts.ConfigError, match="names no module"):
        Scope(exclude=("classifier",)).check_known(m)
    with pytest.raises(ts.ConfigError, match="not a valid regex"):
        Scope(include=("re:(",))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_registered_config_round_trips(name):
    config = CONFIGS[name]()
    data = config_to_dict(config)
    assert data["type"] == name and data["version"] == 1
    assert config_from_dict(data) == config
    assert config_to_dict(config_from_dict(data)) == data


def test_from_dict_rejects_unknown_types_and_fields():
    with pytest.raises(ts.ConfigError, match="unknown technique 'nope'"):
        config_from_dict({"type": "nope"})
    with pytest.raises(ts.ConfigError, match="has no field 'fator'; fields: factor, scope"):
        config_from_dict({"type": "test_scale_weights", "fator": 2})
    with pytest.raises(ts.ConfigError, match=r"factor must be in \(0, 1\]"):
        config_from_dict({"type": "test_scale_weights", "factor": 3})
    scoped = config_from_dict({"type": "test_scale_weights", "scope": {"exclude": ["0"]}})
    assert scoped.scope == Scope(exclude=("0",))


def test_from_dict_checks_field_types():
    with pytest.raises(
        ts.ConfigError, match=r"test_scale_weights.factor must be float, got 'half'"
    ):
        config_from_dict({"type": "test_scale_weights", "factor": "half"})
    with pytest.raises(ts.ConfigError, match=r"must be float, got True"):
        config_from_dict({"type": "test_scale_weights", "factor": True})
    assert config_from_dict({"type": "test_scale_weights", "factor": 1}).factor == 1.0


@pytest.mark.parametrize(
    ("name", "lr", "message"),
    [
        (
            "finetune",
            -1.0,
            r"finetune.lr must be a positive number \(or null for the default\), got -1.0",
        ),
        ("distill", float("nan"), r"distill.lr must be a positive number"),
        ("qat", 0.0, r"qat.lr must be a positive number, got 0.0"),
        ("codebook_quant", None, r"codebook_quant.lr must be a positive number, got None"),
    ],
)
def test_learning_rates_are_checked_alike(name, lr, message):
    with pytest.raises(ts.ConfigError, match=message):
        CONFIGS[name](lr=lr)
    if name in ("finetune", "distill"):
        assert CONFIGS[name](lr=None).lr is None  # null means the technique's default


@pytest.mark.parametrize(
    "module", ["torchslim.hf.structure", "torchslim.hf.layerdrop", "torchslim.techniques.base"]
)
def test_any_module_imported_first_registers_every_technique(module):
    """No import cycle whichever module a user imports first, and no transformers import."""
    import subprocess
    import sys

    code = (
        f"import sys, {module}\n"
        "from torchslim.techniques import CONFIGS\n"
        "assert {'head_pruning', 'embedding_distill', 'channel_pruning'} <= set(CONFIGS)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
