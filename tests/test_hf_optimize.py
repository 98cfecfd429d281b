"""The optimizer on a transformer encoder: the ``embedding_quant`` knob (the word-embedding
table's bits) and the ``linear_int8`` knob (int8 per Linear layer) -- grid checks, the size
cost model against real artifact bytes, the recipe steps, and the size search picking both
up by default for models with an embedding table.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from hf_helpers import tiny_embedding_task  # noqa: E402
from torchslim.errors import ConfigError  # noqa: E402
from torchslim.hf.loading import save_artifact  # noqa: E402
from torchslim.pipeline import apply_recipe  # noqa: E402
from torchslim.search import build_space  # noqa: E402
from torchslim.search.optimize import optimize  # noqa: E402
from torchslim.search.space import GLOBAL, build_recipe, check_grid  # noqa: E402
from torchslim.techniques.embedding_quant import EmbeddingQuant  # noqa: E402
from torchslim.techniques.int8_linear import Int8Linear, LinearInt8  # noqa: E402

SEQ = 24
pytestmark = pytest.mark.usefixtures("hf_offline")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    _, task = tiny_embedding_task(tmp_path_factory.mktemp("hf-opt"), seq_len=SEQ)
    return task, task.baseline(progress=False)


def test_embedding_grid_is_checked_and_ordered():
    assert check_grid("embedding_quant", [4, 32, 8]) == (32, 8, 4)  # off first
    with pytest.raises(ConfigError, match="32 \\(off\\), 8 and/or 4"):
        check_grid("embedding_quant", [6])


def test_size_cost_of_the_table_matches_the_artifact(tiny, tmp_path):
    task, model = tiny
    space = build_space(model, task, ["codebook_quant", "embedding_quant"])
    assert space.layers["embedding_quant"] == [GLOBAL]
    rows, columns = space.data["embedding_quant"]
    table = model.backbone.embeddings.word_embeddings.weight
    assert (rows, columns) == tuple(table.shape)
    off = {"embedding_quant": {GLOBAL: 32}}
    predicted = {}
    for bits, groups in ((8, 1), (4, math.ceil(columns / 32))):
        alloc = {"embedding_quant": {GLOBAL: bits}}
        saved = space.cost(off, "size") - space.cost(alloc, "size")
        # by hand: codes at `bits` instead of fp32, plus an fp16 scale and offset per group
        assert saved == rows * columns * (32 - bits) - rows * groups * 32
        predicted[bits] = saved / 8
    recipe = build_recipe({"embedding_quant": {GLOBAL: 4}})
    (step,) = recipe.steps
    assert isinstance(step, EmbeddingQuant) and (step.bits, step.group_size) == (4, 32)
    small = apply_recipe(recipe, task, model, "val").model
    before = save_artifact(model, tmp_path / "fp32.safetensors")
    after = save_artifact(small, tmp_path / "emb4.safetensors")
    assert before - after == pytest.approx(predicted[4], rel=0.02)
    assert torch.equal(table, model.backbone.embeddings.word_embeddings.weight)  # untouched


def test_linear_int8_knob_cost_matches_the_artifact(tiny, tmp_path):
    task, model = tiny
    assert check_grid("linear_int8", [1, 0]) == (0, 1)
    with pytest.raises(ConfigError, match="0 \\(off\\) and/or 1"):
        check_grid("linear_int8", [8])
    with pytest.raises(ConfigError, match="both replace the Linear layers"):
        build_space(model, task, ["codebook_quant", "linear_int8"])
    space = build_space(model, task, ["linear_int8", "embedding_quant"])
    linears = space.layers["linear_int8"]
    assert len(linears) == 12  # 2 layers x (query, key, value, output, FFN in, FFN out)
    chosen = [name for name in linears if name.endswith(("query", "output.dense"))]
    off = space.allocation({})
    on = {"linear_int8": {name: int(name in chosen) for name in linears}}
    modules = dict(model.named_modules())
    # by hand: 24 of 32 bits saved per weight, fp32 scales added per output channel (weight)
    # and per input channel (SmoothQuant; neither chosen layer folds into another)
    by_hand = sum(
        modules[name].weight.numel() * 24
        - (modules[name].out_features + modules[name].in_features) * 32
        for name in chosen
    )
    assert space.cost(off, "size") - space.cost(on, "size") == by_hand
    recipe = build_recipe(on)
    (step,) = recipe.steps
    assert isinstance(step, LinearInt8) and set(step.scope.include) == set(chosen)
    assert step.smooth == 0.7
    small = apply_recipe(recipe, task, model, "val").model
    quantized = {name for name, m in small.named_modules() if isinstance(m, Int8Linear)}
    assert quantized == set(chosen)
    before = save_artifact(model, tmp_path / "fp32.safetensors")
    after = save_artifact(small, tmp_path / "int8.safetensors")
    assert before - after == pytest.approx(by_hand / 8, rel=0.02)
    assert task.evaluate(small, "test") >= 0.98


def test_size_search_adds_the_embedding_knob_by_default(tiny, tmp_path):
    task, _ = tiny
    result = optimize(
        task,
        max_drop=100.0,
        objective="size",
        trials=2,
        recovery_epochs=0,
        sensitivity_epochs=0,
        out=tmp_path / "opt",
        progress=False,
        latency=False,
    )
    assert set(result.curves) == {"linear_int8", "embedding_quant"}
    steps = [step.name for step in result.recipe.steps]
    assert steps == ["linear_int8", "embedding_quant"]  # a 100-point budget takes all of it
    assert result.met


def test_pipeline_writes_a_transformer_artifact_that_reloads(tiny, tmp_path):
    """What `optimize` / `compress` write for a Hugging Face encoder (issue #18): the
    transformer artifact, which `torchslim.load` and `load_artifact` rebuild from the file."""
    import torchslim as ts
    from torchslim.hf.loading import load_artifact
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import Recipe

    task, base = tiny
    recipe = Recipe(name="best", steps=[LinearInt8(), EmbeddingQuant(bits=4, group_size=8)])
    run = run_recipe(recipe, task, baseline=base, out=tmp_path, latency=False, deploy=False)
    assert run.artifact.name == "best.safetensors"
    assert ts.checkpoint.read_spec(run.artifact)["hf"]["kind"] == "encoder"
    from torchslim.batches import call_model

    inputs = task.inputs(4)
    with torch.no_grad():
        expected = call_model(run.model.eval(), inputs)
        for reloaded in (ts.load(run.artifact), load_artifact(run.artifact)[0]):
            assert torch.equal(call_model(reloaded.eval(), inputs), expected)
