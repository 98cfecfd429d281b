"""The optimizer on a transformer encoder: the ``embedding_quant`` knob (the word-embedding
table's bits) -- grid checks, the size cost model against real artifact bytes, the recipe
step, and the size search picking the knob up by default for models with an embedding table.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from hf_helpers import make_tiny_bert, write_texts  # noqa: E402
from torchslim import tasks  # noqa: E402
from torchslim.errors import ConfigError  # noqa: E402
from torchslim.hf.loading import save_artifact  # noqa: E402
from torchslim.hf.quant import EmbeddingQuant  # noqa: E402
from torchslim.pipeline import apply_recipe  # noqa: E402
from torchslim.search import build_space, optimize  # noqa: E402
from torchslim.search.space import GLOBAL, build_recipe, check_grid  # noqa: E402

SEQ = 24


@pytest.fixture(scope="module", autouse=True)
def _offline_one_thread():
    from torchslim.task import threads_fixed

    patcher = pytest.MonkeyPatch()
    patcher.setenv("HF_HUB_OFFLINE", "1")
    with threads_fixed(1):
        yield
    patcher.undo()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-opt")
    folder = make_tiny_bert(root)
    texts = write_texts(root / "texts.txt", count=48)
    task = tasks.get("text-embedding", model_dir=str(folder), texts=str(texts), seq_len=SEQ)
    return task, task.baseline(progress=False)


def test_embedding_grid_is_checked_and_ordered():
    assert check_grid("embedding_quant", [4, 32, 8]) == (32, 8, 4)  # off first
    with pytest.raises(ConfigError, match="32 \\(off\\), 8 and/or 4"):
        check_grid("embedding_quant", [6])


def test_size_cost_of_the_table_matches_the_artifact(tiny, tmp_path):
    task, model = tiny
    space = build_space(model, task, ["codebook_quant", "embedding_quant"])
    assert space.layers["embedding_quant"] == [GLOBAL]
    rows, columns = space.embedding
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
    assert "embedding_quant" in result.curves
    steps = [step.name for step in result.recipe.steps]
    assert "embedding_quant" in steps  # a 100-point budget takes the 4-bit table
    assert result.met
