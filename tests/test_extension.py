"""A technique registered from one file outside src/ (tests/extension_technique.py) goes
through everything a built-in one does: ``apply``, a recipe's YAML, the optimizer's space,
cost model, sensitivity and search, the saved artifact, ``torchslim.load`` and the report."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import extension_technique as ext
import torchslim as ts
from search_helpers import make_task
from torchslim.errors import ConfigError
from torchslim.recipe import Recipe
from torchslim.search import build_space
from torchslim.search.optimize import optimize
from torchslim.search.space import build_recipe, check_grid
from torchslim.techniques.base import Scope, apply


def _payload_bytes(path) -> int:
    """Bytes of the tensors in a safetensors file (the header aside)."""
    with safe_open(str(path), "pt") as handle:
        return sum(
            handle.get_tensor(key).numel() * handle.get_tensor(key).element_size()
            for key in handle.keys()  # noqa: SIM118 - safe_open has no __iter__
        )


def test_apply_replaces_linears_by_power_of_two_weights() -> None:
    task = make_task()  # 8 -> 32 -> 3
    base = task.baseline(progress=False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    small = apply(base, ext.Pow2Weights(levels=16), task)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # untouched
    layers = [m for m in small.modules() if isinstance(m, ext.Pow2Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(8, 32), (32, 3)]
    for layer, original in zip(layers, (base[0], base[2]), strict=True):
        weight, ref = layer.dequantized_weight(), original.weight.detach()
        nonzero = weight != 0
        # every non-zero weight is +-scale * 2**-k and within a factor sqrt(2) of the original
        exponent = -torch.log2(weight[nonzero].abs() / layer.scale)
        assert torch.equal(exponent, exponent.round()) and exponent.max() <= 15
        ratio = weight[nonzero] / ref[nonzero]
        assert ratio.min() >= 2**-0.5 - 1e-6 and ratio.max() <= 2**0.5 + 1e-6
    x = task.inputs(16)
    assert small(x).shape == base(x).shape
    assert task.evaluate(small, "test") >= task.evaluate(base, "test") - 0.05
    with pytest.raises(ConfigError, match="levels must be in"):
        ext.Pow2Weights(levels=0)


def test_recipe_yaml_round_trips_the_technique() -> None:
    recipe = Recipe(steps=[ext.Pow2Weights(levels=8, scope=Scope(include=("0",)))])
    again = Recipe.from_yaml("pow2.yaml", text=recipe.to_yaml())
    assert again.steps == recipe.steps


def test_knob_space_cost_and_recipe_follow_the_registration() -> None:
    task = make_task()
    base = task.baseline(progress=False)
    assert check_grid(ext.NAME, [1, 0]) == (0, 1)
    with pytest.raises(ConfigError, match="pow2_weights takes 0 \\(off\\) and/or 1 \\(on\\)"):
        check_grid(ext.NAME, [2])
    with pytest.raises(ConfigError, match="both replace the Linear layers"):
        build_space(base, task, ["codebook_quant", ext.NAME])
    space = build_space(base, task, [ext.NAME])
    assert space.layers[ext.NAME] == ["0", "2"]
    off = space.allocation({})
    on = {ext.NAME: {"0": 1, "2": 1}}
    # by hand: 8*32 + 32*3 = 352 weights, 32 + 3 = 35 biases, all fp32
    assert space.cost(off, "size") == (352 + 35) * 32
    # on: 8 bits a weight, one fp32 scale a layer, biases unchanged
    assert space.cost(on, "size") == 352 * 8 + 2 * 32 + 35 * 32
    assert space.cost(on, "macs") == space.cost(off, "macs") == 352
    # after magnitude pruning and its recovery, before static quantization
    mixed = {"magnitude_pruning": {"0": 0.5, "2": 0.0}, ext.NAME: {"0": 0, "2": 1}}
    recipe = build_recipe(mixed, recovery_epochs=1)
    assert [step.name for step in recipe.steps] == ["magnitude_pruning", "finetune", ext.NAME]
    assert recipe.steps[-1].scope.include == ("2",)


def test_optimizer_searches_saves_reloads_and_reports_it(tmp_path) -> None:
    task = make_task()
    base = task.baseline(progress=False)
    result = optimize(
        task,
        max_drop=5.0,
        techniques=[ext.NAME],
        strategy="greedy",
        trials=2,
        recovery_epochs=0,
        sensitivity_epochs=0,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert result.met and result.best is not None
    best = result.best
    assert best.techniques == [ext.NAME]
    data = json.loads((tmp_path / "results.json").read_text())
    assert ext.NAME in data["sensitivity"]
    names = {c["name"]: c for c in data["candidates"]}
    assert names["best"]["techniques"] == [ext.NAME]
    assert list(names["best"]["recipe"]["steps"][0]) == [ext.NAME]
    # codes in buffers count as the weights they stand for: bytes shrink, parameters do not
    assert names["best"]["params"] == data["baseline"]["params"] == 352 + 35
    assert names["best"]["size_ratio"] == pytest.approx(
        data["baseline"]["artifact_bytes"] / names["best"]["artifact_bytes"]
    )
    # the artifact: int8 codes + one fp32 scale per layer + fp32 biases, by hand; the
    # blobs stay separable with every weight a power of two, so both layers convert
    path = best.footprint.artifact
    assert path is not None
    reloaded = ts.load(path, model=task.model)
    layers = [n for n, m in reloaded.named_modules() if isinstance(m, ext.Pow2Linear)]
    assert layers == ["0", "2"]
    assert _payload_bytes(path) == 352 * 1 + 2 * 4 + 35 * 4  # 500 vs 387 * 4 = 1548 in fp32
    assert best.footprint.artifact_bytes < data["baseline"]["artifact_bytes"]
    # reloaded from the file and the original architecture: the same outputs as a re-run
    rerun = Recipe.from_dict(names["best"]["recipe"])
    from torchslim.pipeline import apply_recipe

    again = apply_recipe(rerun, task, base, "val").model.eval()
    x = task.inputs(32)
    assert torch.equal(reloaded(x), again(x))
