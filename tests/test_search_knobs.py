"""The knob registry: the search composes what each technique registers about itself.

The numbers are the cost model and recipes the optimizer built before the techniques
registered their knobs (search/space.py held them in tables), recomputed by hand.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from search_helpers import make_task
from torchslim.errors import ConfigError
from torchslim.search.space import build_recipe, build_space, check_grid, default_knobs
from torchslim.techniques.knobs import KNOBS, pipeline_order


@pytest.fixture(scope="module")
def tiny():
    task = make_task()  # 8 -> 32 -> 3: 256 + 96 weights, 32 + 3 biases
    return task, task.baseline(progress=False)


def test_search_modules_name_no_technique() -> None:
    for name in ("torchslim.search.space", "torchslim.search.sensitivity"):
        module = importlib.import_module(name)  # (the package re-exports a function as one)
        text = Path(module.__file__).read_text(encoding="utf-8")
        named = [name for name in KNOBS if name in text]
        assert named == [], f"{module.__name__} names {named}"
    assert {"channel_pruning", "magnitude_pruning", "svd", "codebook_quant"} <= set(KNOBS)
    assert {"static_quant", "linear_int8", "embedding_quant"} <= set(KNOBS)


def test_pipeline_order_and_defaults() -> None:
    order = [knob.name for knob in pipeline_order()]
    builtin = ["channel_pruning", "svd", "magnitude_pruning", "codebook_quant", "linear_int8"]
    assert [name for name in order if name in builtin] == builtin
    assert order.index("embedding_quant") < order.index("static_quant") == len(order) - 1
    assert default_knobs("size") == ("channel_pruning", "magnitude_pruning", "codebook_quant")
    assert default_knobs("macs") == default_knobs("latency") == ("channel_pruning",)
    assert default_knobs("latency", "onnxruntime") == ("channel_pruning", "static_quant")
    assert default_knobs("size", embedding=True) == ("linear_int8", "embedding_quant")
    assert check_grid("codebook_quant", [4, 8, 2]) == (8, 4, 2)
    assert check_grid("svd", [0.5, 1]) == (1.0, 0.5)
    assert check_grid("magnitude_pruning", [0.5, 0]) == (0.0, 0.5)
    with pytest.raises(ConfigError, match="cannot be optimized; use one of channel_pruning"):
        check_grid("lowrank_magic", [1])


def test_cost_model_of_pruning_and_codebooks_by_hand(tiny) -> None:
    task, base = tiny
    space = build_space(base, task, ["channel_pruning", "magnitude_pruning", "codebook_quant"])
    assert space.data["channel_pruning"] == {"0": {"0": 1.0, "2": 1.0}}
    dense = space.allocation({})
    assert dense["codebook_quant"] == {"0": 8, "2": 8}
    plain = {"channel_pruning": {"0": 0.0}}
    assert space.cost(plain, "size") == (352 + 35) * 32
    assert space.cost(plain, "macs") == 352
    mixed = {
        "channel_pruning": {"0": 0.5},
        "magnitude_pruning": {"0": 0.0, "2": 0.5},
        "codebook_quant": {"0": 4, "2": 4},
    }
    # layer 0: half its outputs, 4-bit codes, fp16 biases; layer 2: half its inputs, half
    # its weights zero (an ideal index costs 1 bit a weight at density 0.5)
    layer0 = 256 * 0.5 * 4 + 32 * 0.5 * 16
    layer2 = 96 * 0.5 * (0.5 * 4 + 1) + 3 * 16
    assert space.cost(mixed, "size") == pytest.approx(layer0 + layer2, rel=1e-12)  # 960
    assert space.cost(mixed, "macs") == pytest.approx(256 * 0.5 + 96 * 0.5, rel=1e-12)
    recipe = build_recipe(mixed, recovery_epochs=2, tuning_epochs=1, recovery="distill")
    steps = recipe.to_dict()["steps"]
    assert [next(iter(step)) for step in steps] == [
        "channel_pruning",
        "magnitude_pruning",
        "distill",
        "codebook_quant",
    ]
    channels, sparsity, distill, codebook = (next(iter(s.values())) for s in steps)
    assert (channels["ratio"], channels["importance"], channels["mode"]) == (0.5, "l1", "layer")
    assert channels["layer_ratios"] == [["0", 0.5]] and channels["scope"]["include"] == ["0"]
    assert sparsity["sparsity"] == 0.5 and sparsity["overrides"] == [["0", 0.0], ["2", 0.5]]
    assert (distill["epochs"], distill["temperature"], distill["alpha"]) == (2, 4.0, 0.7)
    assert codebook["epochs"] == 1 and codebook["layer_bits"] == [["0", 4], ["2", 4]]
    # identity settings leave no step; no compression step, no recovery
    assert build_recipe(plain | {"magnitude_pruning": {"0": 0.0}}, recovery_epochs=2).steps == []


def test_cost_model_of_factorization_and_int8_by_hand(tiny) -> None:
    task, base = tiny
    space = build_space(base, task, ["svd", "linear_int8", "static_quant"])
    assert space.layers == {"svd": ["0"], "linear_int8": ["0", "2"], "static_quant": ["*"]}
    allocation = {"svd": {"0": 0.5}, "linear_int8": {"0": 1, "2": 1}, "static_quant": {"*": 1}}
    # int8: 8 bits a kept weight + fp32 scales per output and per input channel
    layer0 = 256 * 0.5 * 8 + (32 + 256 // 32) * 32 + 32 * 32
    layer2 = 96 * 8 + (3 + 96 // 3) * 32 + 3 * 32
    assert space.cost(allocation, "size") == pytest.approx(layer0 + layer2, rel=1e-12)  # 5312
    # int8 kernels: the 2.5x prior on MACs
    assert space.cost(allocation, "latency") == pytest.approx((128 + 96) / 2.5, rel=1e-12)
    steps = build_recipe(allocation, recovery_epochs=1).to_dict()["steps"]
    assert [next(iter(step)) for step in steps] == [
        "svd",
        "finetune",
        "linear_int8",
        "static_quant",
    ]
    svd, _, int8, static = (next(iter(s.values())) for s in steps)
    assert svd["ratio"] == 0.5 and svd["scope"]["include"] == ["0"]
    # the factorized layer is the chain 0.0, 0.1: later steps reach both
    assert int8["scope"]["include"] == ["re:0(\\.\\d+)?", "2"] and int8["smooth"] == 0.7
    assert static["bits"] == 8
    assert math.isclose(space.cost(space.allocation({}), "size"), (352 + 35) * 32)


def test_unknown_knob_in_an_allocation_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="'pruning_magic' cannot be optimized"):
        build_recipe({"pruning_magic": {"0": 0.5}})


def test_coupling_probe_falls_back_only_on_a_refusal(tiny, monkeypatch) -> None:
    from torchslim.errors import UnsupportedError
    from torchslim.techniques.base import HANDLERS
    from torchslim.techniques.channels import ChannelPruning

    task, base = tiny

    def refuse(model, config, context):
        raise UnsupportedError("this group cannot be pruned")

    monkeypatch.setitem(HANDLERS, ChannelPruning, refuse)
    space = build_space(base, task, ["channel_pruning"])
    assert space.data["channel_pruning"] == {"0": {"0": 1.0}}  # its own outputs only

    def broken(model, config, context):
        raise RuntimeError("a bug in the pruner")

    monkeypatch.setitem(HANDLERS, ChannelPruning, broken)
    with pytest.raises(RuntimeError, match="a bug in the pruner"):  # not a silent cost guess
        build_space(base, task, ["channel_pruning"])
