"""Structured compression of transformer encoders: heads, FFN neurons, layer drop, distillation.

Tiny models built in memory (2 layers, hidden 64, 4 heads, intermediate 128), offline.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

pytest.importorskip("transformers")

from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel  # noqa: E402

from torchslim.errors import CheckpointError, ConfigError, UnsupportedError  # noqa: E402
from torchslim.hf.distill import EmbeddingDistill, distill_encoder  # noqa: E402
from torchslim.hf.layerdrop import LayerDrop, choose_layers  # noqa: E402
from torchslim.hf.structure import (  # noqa: E402
    FFNPruning,
    HeadPruning,
    activation_scores,
    apply_encoder_structure,
    encoder_layers,
    encoder_structure,
    taylor_scores,
)
from torchslim.metrics import CosineFidelity  # noqa: E402
from torchslim.task import Task, TrainConfig  # noqa: E402
from torchslim.techniques.base import ApplyContext, Scope, apply, config_from_dict  # noqa: E402
from torchslim.techniques.lowrank import Factorized, SVDFactorization  # noqa: E402

HIDDEN, HEADS, HEAD_SIZE, FFN, LAYERS, VOCAB = 64, 4, 16, 128, 2, 100


class MeanPooled(nn.Module):
    """A sentence encoder: BERT + masked mean pooling + L2 normalization."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def tiny_bert(seed: int = 0, std: float = 0.2) -> MeanPooled:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        initializer_range=std,
    )
    torch.manual_seed(seed)
    return MeanPooled(BertModel(config, add_pooling_layer=False)).eval()


class Tokens(Dataset):
    """Random token sequences with padding, as dict samples."""

    def __init__(self, count: int, seed: int, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, VOCAB, (count, length), generator=generator)
        lengths = torch.randint(6, length + 1, (count,), generator=generator)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        self.ids = self.ids * self.mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "attention_mask": self.mask[index]}


def batch(count: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    data = Tokens(count, seed)
    return {"input_ids": data.ids, "attention_mask": data.mask}


def make_task(teacher: nn.Module, train: int = 128, epochs: int = 0, lr: float = 2e-3) -> Task:
    return Task(
        name="tiny-embedding",
        model=teacher,
        train=Tokens(train, seed=10),
        test=Tokens(64, seed=20),
        metric=CosineFidelity(teacher),
        train_config=TrainConfig(epochs=epochs, lr=lr, batch_size=16, threads=1, seed=0),
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def zero_heads(model: MeanPooled, keep: dict[int, list[int]]) -> MeanPooled:
    """The unpruned model with the removed heads silenced (their value rows zeroed)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for index, enc in enumerate(encoder_layers(ref)):
            value = enc.linear("value")
            for head in set(range(HEADS)) - set(keep[index]):
                rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
                value.weight[rows] = 0
                value.bias[rows] = 0
    return ref


# ------------------------------------------------------------------ head pruning


def test_head_pruning_removes_heads_and_matches_silenced_heads():
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    context = ApplyContext()
    pruned = apply(model, HeadPruning(ratio=0.5), context=context)
    removed = 2  # of 4 heads, per layer
    for enc in encoder_layers(pruned):
        assert enc.num_heads == 2 and enc.attention.num_attention_heads == 2
        assert enc.attention.all_head_size == 2 * HEAD_SIZE
        for role in ("query", "key", "value"):
            assert tuple(enc.linear(role).weight.shape) == (2 * HEAD_SIZE, HIDDEN)
            assert tuple(enc.linear(role).bias.shape) == (2 * HEAD_SIZE,)
        assert tuple(enc.linear("out").weight.shape) == (HIDDEN, 2 * HEAD_SIZE)
    per_layer = 3 * removed * HEAD_SIZE * (HIDDEN + 1) + removed * HEAD_SIZE * HIDDEN
    assert n_params(model) - n_params(pruned) == LAYERS * per_layer == 16576
    inputs = batch()
    out = run(pruned, inputs)
    assert out.shape == (6, HIDDEN) and torch.isfinite(out).all()
    note = context.notes["head_pruning"][0]
    assert note["heads_after"] == [2, 2] and note["params_before"] - note["params_after"] == 16576
    scores = [
        torch.stack(
            [
                sum(
                    enc.linear(r).weight[h * HEAD_SIZE : (h + 1) * HEAD_SIZE].pow(2).sum()
                    for r in ("query", "key", "value")
                )
                + enc.linear("out").weight[:, h * HEAD_SIZE : (h + 1) * HEAD_SIZE].pow(2).sum()
                for h in range(HEADS)
            ]
        )
        for enc in encoder_layers(model)
    ]
    kept = {i: sorted(s.argsort(descending=True)[:2].tolist()) for i, s in enumerate(scores)}
    # exactly the function of the original with the two weakest heads per layer silenced
    reference = run(zero_heads(model, kept), inputs)
    assert torch.allclose(out, reference, atol=1e-5)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_layer_head_ratios_and_structure_record_round_trip():
    model = tiny_bert()
    pruned = apply(model, HeadPruning(layer_ratios=(0.25, 0.75)))
    assert [enc.num_heads for enc in encoder_layers(pruned)] == [3, 1]
    record = encoder_structure(pruned)
    assert [layer["heads"] for layer in record["layers"]] == [3, 1]
    assert record["container"] == "backbone.encoder.layer" and record["style"] == "bert"
    rebuilt = apply_encoder_structure(tiny_bert(seed=5), record)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    inputs = batch()
    assert torch.allclose(run(rebuilt.eval(), inputs), run(pruned, inputs), atol=1e-6)
    with pytest.raises(CheckpointError, match="layers"):
        apply_encoder_structure(tiny_bert(), {**record, "layers": record["layers"] * 2})


def test_taylor_importance_finds_a_dead_head():
    model = tiny_bert()
    with torch.no_grad():  # head 2 of layer 0 contributes nothing
        value = encoder_layers(model)[0].linear("value")
        value.weight[2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
        value.bias[2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
    batches = [batch(8, seed=s) for s in range(3)]
    heads, ffn = taylor_scores(model, batches)
    assert heads[0][2] < 1e-10 and heads[0].min() == heads[0][2]
    assert all(float(s.min()) > 0 for s in heads[1:]) and float(heads[0].max()) > 1e-6
    assert [len(s) for s in ffn] == [FFN, FFN]
    act_heads, act_ffn = activation_scores(model, batches)
    assert act_heads[0][2] < 1e-6 < float(act_heads[0].max())
    assert [len(s) for s in act_ffn] == [FFN, FFN] and float(act_ffn[1].min()) >= 0
    task = make_task(model)
    pruned = apply(model, HeadPruning(ratio=0.25, importance="taylor"), task)
    inputs = batch()
    # removing the dead head changes nothing in layer 0; layer 1 loses its weakest head
    assert encoder_layers(pruned)[0].num_heads == 3
    silenced = zero_heads(model, {0: [0, 1, 3], 1: list(range(HEADS))})
    only_layer0 = apply(model, HeadPruning(layer_ratios=(0.25, 0.0), importance="taylor"), task)
    assert torch.allclose(run(only_layer0, inputs), run(silenced, inputs), atol=1e-5)
    assert torch.isfinite(run(pruned, inputs)).all()


def test_head_pruning_bad_inputs_leave_model_alone():
    model = tiny_bert()
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            HeadPruning(ratio=ratio)
    with pytest.raises(ConfigError, match="zero|at least 1"):
        apply(model, HeadPruning(ratio=0.9), inplace=True)  # 4 heads - round(3.6) = 0 left
    with pytest.raises(ConfigError, match="one ratio per layer"):
        apply(model, HeadPruning(layer_ratios=(0.5,)), inplace=True)
    for importance in ("taylor", "activation"):
        with pytest.raises(ConfigError, match=f"{importance} importance needs calibration"):
            apply(model, HeadPruning(importance=importance), inplace=True)  # no task, no data
    with pytest.raises(ConfigError, match="importance"):
        HeadPruning(importance="random")
    with pytest.raises(ConfigError, match="exclude"):
        HeadPruning(layer_ratios=(0.5, 0.5), allocation="global")
    assert [enc.num_heads for enc in encoder_layers(model)] == [HEADS, HEADS]
    with pytest.raises(UnsupportedError, match="BERT-like encoder"):
        apply(nn.Sequential(nn.Linear(4, 4)), HeadPruning())
    config = config_from_dict({"type": "head_pruning", "ratio": 0.5, "layer_ratios": [0.5, 0.25]})
    assert config == HeadPruning(ratio=0.5, layer_ratios=(0.5, 0.25))


def test_global_allocation_keeps_a_head_per_layer():
    model = tiny_bert()
    with torch.no_grad():  # make layer 1 much weaker: global magnitude still keeps >= 1 head
        for role in ("query", "key", "value"):
            encoder_layers(model)[1].linear(role).weight.mul_(1e-3)
    pruned = apply(model, HeadPruning(ratio=0.5, allocation="global"))
    heads = [enc.num_heads for enc in encoder_layers(pruned)]
    assert sum(heads) == 4 and min(heads) >= 1
    assert torch.isfinite(run(pruned, batch())).all()


# ------------------------------------------------------------------ FFN pruning


def test_ffn_pruning_removes_neurons_exactly():
    model = tiny_bert()
    pruned = apply(model, FFNPruning(ratio=0.5))
    removed = FFN // 2
    for enc in encoder_layers(pruned):
        assert tuple(enc.linear("ffn_in").weight.shape) == (FFN - removed, HIDDEN)
        assert tuple(enc.linear("ffn_out").weight.shape) == (HIDDEN, FFN - removed)
    assert n_params(model) - n_params(pruned) == LAYERS * removed * (2 * HIDDEN + 1)
    # same function as the original with the removed neurons silenced (GELU(0) = 0)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for enc, small in zip(encoder_layers(reference), encoder_layers(pruned), strict=True):
            first = enc.linear("ffn_in")
            kept = [
                i
                for i in range(FFN)
                if any(torch.equal(first.weight[i], row) for row in small.linear("ffn_in").weight)
            ]
            assert len(kept) == FFN - removed
            dead = sorted(set(range(FFN)) - set(kept))
            first.weight[dead] = 0
            first.bias[dead] = 0
    inputs = batch()
    out = run(pruned, inputs)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, run(reference, inputs), atol=1e-5)
    widths = apply(model, FFNPruning(layer_ratios=(0.3, 0.6), multiple=8))
    assert [enc.intermediate for enc in encoder_layers(widths)] == [96, 56]
    with pytest.raises(ConfigError, match="multiple"):
        FFNPruning(multiple=0)


def test_distilbert_style_layers_are_found():
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=FFN,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DistilBertModel(config).eval()
    pruned = apply(model, HeadPruning(ratio=0.5))
    pruned = apply(pruned, FFNPruning(ratio=0.25))
    assert [(e.num_heads, e.intermediate) for e in encoder_layers(pruned)] == [(2, 96), (2, 96)]
    assert encoder_layers(pruned)[0].attention.n_heads == 2
    inputs = batch()
    out = pruned(**inputs).last_hidden_state
    assert out.shape == (6, 16, HIDDEN) and torch.isfinite(out).all()


# ------------------------------------------------------------------ low-rank on BERT


def test_lowrank_svd_on_attention_and_ffn_projections():
    model = tiny_bert()
    with torch.no_grad():  # give every projection an exact rank-12 weight
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and "encoder" in name:
                u, s, vh = torch.linalg.svd(module.weight, full_matrices=False)
                module.weight.copy_(u[:, :12] @ torch.diag(s[:12]) @ vh[:12])
    scope = Scope(include=(r"re:.*\.(query|key|value|dense)",))
    context = ApplyContext()
    small = apply(model, SVDFactorization(ratio=0.5, keep_classifier=False, scope=scope),
                  context=context)  # fmt: skip
    layer = small.backbone.encoder.layer[0]
    for module in (layer.attention.self.query, layer.attention.output.dense,
                   layer.intermediate.dense, layer.output.dense):  # fmt: skip
        assert isinstance(module, Factorized)
    rows = [r for r in context.notes["lowrank"] if r["status"] == "factorized"]
    assert len(rows) == 6 * LAYERS and all(r["rank"] >= 12 for r in rows)
    assert n_params(small) < n_params(model) - 20000
    inputs = batch()
    out = run(small, inputs)
    assert torch.isfinite(out).all()
    # rank 12 fits inside every chosen rank: the factorized BERT computes the same function
    assert float(F.cosine_similarity(out, run(model, inputs)).min()) > 0.9999
    tight = apply(model, SVDFactorization(rank=4, keep_classifier=False, scope=scope))
    assert float(F.cosine_similarity(run(tight, inputs), run(model, inputs)).mean()) < 0.999


# ------------------------------------------------------------------ layer drop + distillation


def test_layer_drop_keeps_teacher_layers():
    assert choose_layers(6, 3) == [0, 2, 5]
    assert choose_layers(6, 1) == [0] and choose_layers(6, 6) == list(range(6))
    assert choose_layers(6, 2, "last") == [4, 5]
    teacher = tiny_bert()
    student = apply(teacher, LayerDrop(layers=(1,)))
    assert len(encoder_layers(student)) == 1 and len(encoder_layers(teacher)) == 2
    assert student.backbone.config.num_hidden_layers == 1
    assert teacher.backbone.config.num_hidden_layers == 2
    kept = encoder_layers(student)[0].layer
    assert kept.torchslim_teacher_index == 1
    assert torch.equal(
        kept.intermediate.dense.weight, encoder_layers(teacher)[1].layer.intermediate.dense.weight
    )
    assert encoder_structure(student)["layers"][0]["teacher_index"] == 1
    assert torch.isfinite(run(student, batch())).all()
    with pytest.raises(ConfigError, match="1..2"):
        apply(teacher, LayerDrop(keep=3))
    assert len(encoder_layers(apply(teacher, LayerDrop()))) == 1  # default: half, rounded up
    for bad in ({"keep": 0}, {"layers": (0, 0)}, {"keep": 1, "layers": (0,)}, {"layers": (-1,)}):
        with pytest.raises(ConfigError):
            LayerDrop(**bad)
    with pytest.raises(ConfigError, match="out of range"):
        apply(teacher, LayerDrop(layers=(0, 2)))
    with pytest.raises(ConfigError, match="strategy"):
        LayerDrop(keep=1, strategy="middle")


def test_distilled_layer_dropped_student_beats_undistilled():
    teacher = tiny_bert()
    task = make_task(teacher)
    student = apply(teacher, LayerDrop(keep=1))
    undistilled = task.evaluate(student)
    context = ApplyContext(task=task, teacher=teacher)
    config = EmbeddingDistill(epochs=4, lr=3e-3, hidden_weight=1.0)
    distilled = apply(student, config, context=context)
    after = task.evaluate(distilled)
    assert after > undistilled + 0.03, (undistilled, after)
    assert context.notes["distill"][0]["steps"] == 4 * 8
    # same seed, same steps: reproducible
    again = apply(student, config, context=ApplyContext(task=task, teacher=teacher))
    assert abs(task.evaluate(again) - after) < 1e-6
    # the teacher is untouched and in eval mode
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())


def test_distillation_recovers_pruned_model_and_rejects_bad_settings():
    teacher = tiny_bert()
    task = make_task(teacher)
    pruned = apply(teacher, FFNPruning(ratio=0.75))
    before = task.evaluate(pruned)
    distill_encoder(pruned, teacher, task, epochs=2, lr=2e-3)
    assert task.evaluate(pruned) > before
    for bad in ({"cosine_weight": -1.0}, {"cosine_weight": 0.0, "mse_weight": 0.0},
                {"epochs": 0}, {"loss": "kl"}, {"lr": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            EmbeddingDistill(**bad)
    with pytest.raises(ConfigError, match="needs a task"):
        apply(pruned, EmbeddingDistill())


# ------------------------------------------------------------------ artifact round trip


def test_pruned_and_dropped_encoder_round_trips_through_artifact(tmp_path):
    from hf_helpers import make_tiny_bert
    from torchslim.hf.loading import load_artifact, load_encoder, save_artifact

    folder = make_tiny_bert(tmp_path, layers=3)
    encoder = load_encoder(folder)
    small = apply(encoder, LayerDrop(layers=(0, 2)))
    small = apply(small, HeadPruning(layer_ratios=(0.25, 0.5)))
    small = apply(small, FFNPruning(layer_ratios=(0.5, 0.25)))
    shapes = [(e.num_heads, e.intermediate) for e in encoder_layers(small)]
    assert shapes == [(3, 64), (2, 96)]
    size = save_artifact(small, tmp_path / "small.safetensors")
    full = save_artifact(encoder, tmp_path / "full.safetensors")
    assert size < full
    loaded, _ = load_artifact(tmp_path / "small.safetensors")
    assert [(e.num_heads, e.intermediate) for e in encoder_layers(loaded)] == shapes
    assert [e.layer.torchslim_teacher_index for e in encoder_layers(loaded)] == [0, 2]
    data = Tokens(4, seed=3)
    inputs = {"input_ids": data.ids % 60, "attention_mask": data.mask}
    assert torch.allclose(run(loaded, inputs), run(small, inputs), atol=1e-6)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_data_driven_ffn_importance_removes_dead_neurons_first(importance):
    model = tiny_bert()
    with torch.no_grad():  # 32 neurons per layer never fire (GELU of a very negative input is 0)
        for enc in encoder_layers(model):
            enc.linear("ffn_in").bias[::4] = -1e4
    task = make_task(model)
    pruned = apply(model, FFNPruning(ratio=0.25, importance=importance), task)
    assert [enc.intermediate for enc in encoder_layers(pruned)] == [96, 96]
    inputs = batch()
    assert torch.allclose(run(pruned, inputs), run(model, inputs), atol=1e-5)
    by_magnitude = apply(model, FFNPruning(ratio=0.25), task)  # blind to the dead neurons
    assert not torch.allclose(run(by_magnitude, inputs), run(model, inputs), atol=1e-3)


def test_structured_pruning_through_the_text_embedding_task(tmp_path):
    from hf_helpers import make_tiny_bert, write_texts
    from torchslim.hf.tasks import text_embedding_task

    folder = make_tiny_bert(tmp_path)
    task = text_embedding_task(
        folder, texts=write_texts(tmp_path / "texts.txt", count=48), seq_len=32, batch_sizes=(1,)
    )
    teacher = task.build_model()
    assert task.evaluate(teacher) > 0.9999
    heads = apply(teacher, HeadPruning(ratio=0.25, importance="taylor"), task)
    both = apply(heads, FFNPruning(ratio=0.5, importance="activation"), task)
    assert [(e.num_heads, e.intermediate) for e in encoder_layers(both)] == [(3, 64), (3, 64)]
    out = task.evaluate(both)
    assert 0.3 < out < 0.9999  # a real change of the function, and finite
    context = ApplyContext(task=task, teacher=teacher)
    recovered = apply(both, EmbeddingDistill(epochs=3, lr=3e-3), context=context)
    assert task.evaluate(recovered) > out + 0.05
