"""A user's own model (not in the registry): every structure-changing technique's file reloads
with ``torchslim.load(path, model=original)`` to identical outputs; the CLI does it with
``--task file.py:fn``; a file loaded into the wrong model names the first mismatching layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts
from torchslim.cli import main
from torchslim.pipeline import artifact_io
from torchslim.techniques import CONFIGS, apply
from torchslim.techniques.base import Scope

MODEL_SOURCE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class UserNet(nn.Module):
    """A small CNN of the user's own: stem, a residual block, a Linear head."""

    def __init__(self, width: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            Residual(width),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * width * 4, classes)

    def forward(self, x):
        return self.head(self.flatten(self.features(x)))


def data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(samples, 1, 8, 8, generator=generator)
    return TensorDataset(images, torch.randint(0, 4, (samples,), generator=generator))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = UserNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def task() -> ts.Task:
    return ts.Task(
        name="user-net",
        model=make_model,
        train=data(64, 0),
        val=data(32, 1),
        test=data(48, 2),
        train_config=ts.TrainConfig(epochs=0, batch_size=16, seed=0),
    )
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory):
    """The task file on disk, its namespace, and the task built from it."""
    folder = tmp_path_factory.mktemp("user")
    path = folder / "user_task.py"
    path.write_text(MODEL_SOURCE)
    namespace: dict = {}
    exec(compile(MODEL_SOURCE, str(path), "exec"), namespace)  # noqa: S102 - our own source
    task = ts.tasks.get(f"{path}:task")
    return path, namespace, task


def _outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def _roundtrip(user, config, tmp_path: Path, fmt: str | None = None) -> tuple[nn.Module, Path]:
    _, namespace, task = user
    original = namespace["make_model"]()
    assert "arch" not in task.spec()
    compressed = apply(original, config, task)
    path = tmp_path / "compressed.safetensors"
    io = artifact_io(compressed, task, fmt) if fmt else None
    ts.measure(compressed, task, artifact=path, io=io, latency=False)
    reloaded = ts.load(path, model=namespace["make_model"]())
    inputs = task.inputs(8)
    assert torch.equal(_outputs(reloaded, inputs), _outputs(compressed, inputs))
    return reloaded, path


def test_channel_pruning_reloads(user, tmp_path: Path) -> None:
    reloaded, path = _roundtrip(user, CONFIGS["channel_pruning"](ratio=0.5), tmp_path)
    spec = ts.checkpoint.read_spec(path)
    # the stem conv (16 -> 8 channels) and the second conv (32 -> 16) are recorded
    assert spec["structure"]["features.0"]["out_channels"] == 8
    assert spec["structure"]["features.5"]["out_channels"] == 16
    assert reloaded.head.in_features == 16 * 4
    assert ts.count_parameters(reloaded) < 0.35 * ts.count_parameters(user[1]["make_model"]())


@pytest.mark.parametrize("technique", ["svd", "tucker2"])
def test_lowrank_reloads(user, tmp_path: Path, technique: str) -> None:
    options = {"keep_classifier": False} if technique == "svd" else {}
    reloaded, path = _roundtrip(user, CONFIGS[technique](ratio=0.3, **options), tmp_path)
    factorized = ts.checkpoint.read_spec(path)["factorized"]
    assert factorized, "no factorized layer recorded"
    for name, entry in factorized.items():
        assert type(reloaded.get_submodule(name)).__name__ == "Factorized"
        assert len(entry["layers"]) >= 2


def test_codebook_packed_reloads(user, tmp_path: Path) -> None:
    config = CONFIGS["codebook_quant"](bits=3, epochs=0)
    reloaded, path = _roundtrip(user, config, tmp_path, fmt="packed")
    spec = ts.checkpoint.read_spec(path)
    assert spec["format"].startswith("torchslim.packed")
    assert spec["structure"]["head"]["type"] == "CodebookLayer"
    assert int(reloaded.head.indices.max()) < 8  # 3-bit codes


def test_static_quant_packed_and_checkpoint_reload(user, tmp_path: Path) -> None:
    config = CONFIGS["static_quant"](bits=8, calibration_batches=2)
    reloaded, path = _roundtrip(user, config, tmp_path, fmt="packed")
    layer = ts.checkpoint.read_spec(path)["structure"]["features.0"]
    assert layer["type"] == "QuantizedLayer" and layer["input"]["mode"] == "quant"
    assert type(reloaded.features[1]).__name__ == "Identity"  # folded BatchNorm
    # the same model as a plain checkpoint (fake-quantized float weights) reloads too
    _roundtrip(user, config, tmp_path / "plain")


def test_pruned_then_quantized_reloads(user, tmp_path: Path) -> None:
    _, namespace, task = user
    pruned = apply(namespace["make_model"](), CONFIGS["channel_pruning"](ratio=0.5), task)
    quantized = apply(pruned, CONFIGS["static_quant"](calibration_batches=2), task)
    path = tmp_path / "both.safetensors"
    ts.measure(quantized, task, artifact=path, io=artifact_io(quantized, task, "packed"))
    reloaded = ts.load(path, model=namespace["make_model"])  # a factory works too
    inputs = task.inputs(8)
    assert torch.equal(_outputs(reloaded, inputs), _outputs(quantized, inputs))
    assert reloaded.features[0].module.out_channels == 8


def test_early_exit_reloads(user, tmp_path: Path) -> None:
    config = CONFIGS["early_exit"](epochs=0, threshold=0.3)
    reloaded, path = _roundtrip(user, config, tmp_path, fmt="torch")
    entry = ts.checkpoint.read_spec(path)["early_exit"]
    assert entry["exits"] == ["features.3"] and entry["threshold"] == pytest.approx(0.3)
    assert len(reloaded.heads) == 1


@pytest.mark.parametrize("head_ratio", [0.0, 0.5], ids=["head-dims", "heads"])
def test_vit_heads_and_tokens_reload(tmp_path: Path, head_ratio: float) -> None:
    """num_heads / head_dim of fused-qkv attention and the resized class token / position
    embedding are recorded, so a pruned ViT replica (tests/test_patterns.py) reloads."""
    from test_patterns import ViTReplica, _random_bn

    original = _random_bn(ViTReplica())
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 10)
    task = ts.Task(name="vit", model=original, test=data, train_config=ts.TrainConfig(epochs=0))
    pruned = apply(original, CONFIGS["channel_pruning"](ratio=0.5, head_ratio=head_ratio), task)
    path = tmp_path / "vit.safetensors"
    ts.measure(pruned, task, artifact=path, latency=False)
    spec = ts.checkpoint.read_spec(path)
    assert spec["resized"]["cls_token"] == [1, 1, 16]
    assert spec["resized"]["pos_embed"] == [1, 17, 16]
    expected = {"num_heads": 2} if head_ratio else {"head_dim": 4}
    assert spec["attributes"]["blocks.0.attn"] == expected
    reloaded = ts.load(path, model=ViTReplica)
    assert (reloaded.blocks[1].attn.num_heads, reloaded.blocks[1].attn.head_dim) == (
        pruned.blocks[1].attn.num_heads,
        pruned.blocks[1].attn.head_dim,
    )
    inputs = task.inputs(4)
    assert torch.equal(_outputs(reloaded, inputs), _outputs(pruned, inputs))


def test_cli_measure_and_export_with_task_file(user, tmp_path: Path, capsys) -> None:
    path, namespace, task = user
    pruned = apply(namespace["make_model"](), CONFIGS["channel_pruning"](ratio=0.5), task)
    artifact = tmp_path / "pruned.safetensors"
    expected = ts.measure(pruned, task, artifact=artifact, latency=False)
    capsys.readouterr()
    # the task file named in the file is not followed on its own (issue #16)
    assert main(["measure", str(artifact), "--no-latency", "--json"]) != 0
    capsys.readouterr()
    code = main(["measure", str(artifact), "--task", f"{path}:task", "--no-latency", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["footprint"]["metric"] == pytest.approx(expected.metric, abs=1e-9)
    assert payload["footprint"]["params"] == ts.count_parameters(pruned)
    # a packed int8 artifact of the pruned model: rebuilt and measured the same way
    quantized = apply(pruned, CONFIGS["static_quant"](calibration_batches=2), task)
    packed = tmp_path / "packed.safetensors"
    expected = ts.measure(
        quantized, task, artifact=packed, io=artifact_io(quantized, task, "packed"), latency=False
    )
    capsys.readouterr()
    code = main(["measure", str(packed), "--task", f"{path}:task", "--no-latency", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["footprint"]["metric"] == pytest.approx(expected.metric, abs=1e-9)
    assert payload["footprint"]["artifact_bytes"] == packed.stat().st_size
    onnx_path = tmp_path / "pruned.onnx"
    code = main(
        [
            "export",
            str(artifact),
            "--format",
            "onnx",
            "--task",
            f"{path}:task",
            "--out",
            str(onnx_path),
        ]
    )
    assert code == 0 and onnx_path.stat().st_size > 1000
    # the packed int8 file exports to ONNX: its dequantized weights, float activations
    onnx_path = tmp_path / "packed.onnx"
    code = main(
        [
            "export",
            str(packed),
            "--format",
            "onnx",
            "--task",
            f"{path}:task",
            "--out",
            str(onnx_path),
        ]
    )
    assert code == 0
    from torchslim.export.onnx import OrtModule
    from torchslim.techniques.fake_quant import to_float_model

    inputs = task.inputs(8)
    with torch.no_grad():  # the int8 weights, float activations
        reference = to_float_model(quantized).eval()(inputs)
    assert torch.allclose(OrtModule(onnx_path)(inputs), reference, atol=1e-4)


def test_wrong_model_names_first_mismatching_layer(user, tmp_path: Path) -> None:
    _, namespace, task = user
    config = CONFIGS["svd"](ratio=0.3, keep_classifier=False)  # factorizes only the head
    compressed = apply(namespace["make_model"](), config, task)
    path = tmp_path / "svd.safetensors"
    ts.measure(compressed, task, artifact=path, latency=False)
    wider = namespace["UserNet"](width=24)  # the same layers, other widths
    with pytest.raises(ts.CheckpointError) as info:
        ts.load(path, model=wider)
    assert str(info.value) == (
        f"checkpoint {path} does not match the architecture: features.0.weight has shape "
        "(16, 1, 3, 3) in the file but (24, 1, 3, 3) in the model; load it with the task or "
        "model it was saved from"
    )
    # a model without the recorded layers
    with pytest.raises(ts.CheckpointError, match="factorizes layer head, which the architecture"):
        ts.load(path, model=nn.Sequential(nn.Linear(2, 2)))
    # another architecture altogether (e.g. a distilled student): its own factory is needed
    plain = tmp_path / "plain.safetensors"
    ts.measure(namespace["make_model"](), task, artifact=plain, latency=False)
    with pytest.raises(ts.CheckpointError, match=r"missing .* pass its own factory"):
        ts.load(plain, model=nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ts.CheckpointError, match=r"pass it: torchslim.load\(path, model="):
        ts.load(path)
    assert wider.features[0].weight.shape == (24, 1, 3, 3)  # the given model is not modified


def test_compress_pipeline_artifact_reloads(user, tmp_path: Path) -> None:
    """What `torchslim compress` / `optimize` write (run_recipe's artifact) reloads."""
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import Recipe

    _, namespace, task = user
    recipe = Recipe(
        name="prune-tucker-int8",
        steps=[
            CONFIGS["channel_pruning"](ratio=0.5),
            CONFIGS["tucker2"](ratio=0.5),
            CONFIGS["static_quant"](calibration_batches=2),
        ],
    )
    run = run_recipe(recipe, task, out=tmp_path, latency=False, deploy=False)
    spec = ts.checkpoint.read_spec(run.artifact)
    assert spec["format"].startswith("torchslim.packed") and spec["structure"]
    # Tucker-2 factors of the pruned convs, each factor wrapped by int8 quantization
    assert set(spec["factorized"]) >= {"features.4.conv1", "features.4.conv2", "features.5"}
    assert spec["factorized"]["features.5"]["layers"][0]["type"] == "QuantizedLayer"
    reloaded = ts.load(run.artifact, model=namespace["make_model"]())
    inputs = task.inputs(8)
    assert torch.equal(_outputs(reloaded, inputs), _outputs(run.model, inputs))


@pytest.mark.filterwarnings("ignore:dynamic_quant. skipping")
@pytest.mark.parametrize(
    ("technique", "fmt"), [("dynamic_quant", "packed"), ("magnitude_pruning", "sparse")]
)
def test_dynamic_int8_and_sparse_files_reload(user, tmp_path: Path, technique, fmt) -> None:
    _, _, task = user
    config = CONFIGS[technique]() if fmt == "packed" else CONFIGS[technique](sparsity=0.7)
    reloaded, path = _roundtrip(user, config, tmp_path, fmt=fmt)
    spec = ts.checkpoint.read_spec(path)
    if fmt == "packed":  # only Linear layers: the head, with per-batch input ranges
        assert spec["structure"]["head"]["input"]["mode"] == "dynamic"
        assert list(spec["structure"]) == ["head"]
    else:  # the shapes are the original's: nothing to record
        assert "sparse" in spec and "structure" not in spec


def test_multihead_attention_heads_reload(tmp_path: Path) -> None:
    """nn.MultiheadAttention with half its heads removed becomes HeadPrunedAttention."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.embed(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 5, 6), torch.arange(8) % 3)
    task = ts.Task(name="mha", model=Encoder(), test=data, train_config=ts.TrainConfig(epochs=0))
    config = CONFIGS["channel_pruning"](ratio=0.0, head_ratio=0.5)
    pruned = apply(task.build_model(), config, task)
    path = tmp_path / "mha.safetensors"
    ts.measure(pruned, task, artifact=path, latency=False)
    entry = ts.checkpoint.read_spec(path)["structure"]["attn"]
    assert (entry["type"], entry["num_heads"], entry["head_dim"]) == ("HeadPrunedAttention", 2, 4)
    reloaded = ts.load(path, model=Encoder())
    inputs = task.inputs(4)
    assert torch.equal(_outputs(reloaded, inputs), _outputs(pruned, inputs))


def test_gated_skip_reloads(user, tmp_path: Path) -> None:
    """A residual block wrapped by gated_skip: the gate and its branches are recorded, so
    ts.load rebuilds the gated model from the original and computes the same outputs, with
    the same per-sample choice of branch."""
    from torchslim.techniques.dynamic import GatedBranches

    _, namespace, task = user
    config = CONFIGS["gated_skip"](scope=Scope(include=("features.4",)), epochs=0)
    gated = apply(namespace["make_model"](), config, task)
    inputs = task.inputs(16)
    with torch.no_grad():  # a gate that skips the block for half the samples
        gate = gated.features[4].gate
        gate.weight.copy_(
            torch.randn(gate.weight.shape, generator=torch.Generator().manual_seed(1))
        )
        gate.bias.zero_()
        scores = gated.features[4].gate_logits(gated.features[:4](inputs))
        gate.bias[1] = (scores[:, 0] - scores[:, 1]).median() + 1e-4
    path = tmp_path / "gated.safetensors"
    ts.measure(gated, task, artifact=path, latency=False)
    spec = ts.checkpoint.read_spec(path)
    assert spec["gated"] == {
        "features.4": {"channels": 16, "branches": ["original", {"type": "Identity"}]}
    }
    reloaded = ts.load(path, model=namespace["make_model"]())
    block = reloaded.features[4]
    assert isinstance(block, GatedBranches) and block.branch_counts == [0, 0]
    assert torch.equal(_outputs(reloaded, inputs), _outputs(gated, inputs))
    assert block.branch_counts == [8, 8]  # the gate's choices, sample by sample
    # the original branch keeps the Residual block's weights under its own names
    assert torch.equal(block.branches[0].conv1.weight, gated.features[4].branches[0].conv1.weight)


class TwoInputNet(nn.Module):
    """A user model with two inputs: an image branch and a metadata branch, fused."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.meta = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.fuse = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.image(image), self.meta(meta)], 1)
        return self.head(torch.relu(self.fuse(both)))


class _TwoInputs(torch.utils.data.Dataset):
    """Batches of ((image, meta), label) or {"image", "meta", "labels"}."""

    def __init__(self, kind: str, samples: int = 24) -> None:
        generator = torch.Generator().manual_seed(3)
        self.kind = kind
        self.images = torch.randn(samples, 1, 8, 8, generator=generator)
        self.meta = torch.randn(samples, 4, generator=generator)
        self.labels = torch.randint(0, 3, (samples,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.kind == "dict":
            return {"image": self.images[i], "meta": self.meta[i], "labels": self.labels[i]}
        return (self.images[i], self.meta[i]), self.labels[i]


def _two_input_net() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputNet().eval()


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_model_with_several_inputs_prunes_and_reloads(tmp_path: Path, kind: str) -> None:
    """forward(image, meta) fed positionally (tuple batches) or by keyword (dict batches)."""
    from torchslim.task import call_model

    data = _TwoInputs(kind)
    task = ts.Task(name=f"two-{kind}", model=_two_input_net, train=data, val=data, test=data)
    inputs = task.inputs(8)
    assert isinstance(inputs, dict if kind == "dict" else list)
    model = task.build_model()
    pruned = apply(model, CONFIGS["channel_pruning"](ratio=0.5), task)
    # both branches and the fusion halve (the head is the classifier): by hand, conv 1->4
    # (4*9 + 4), meta 4->4 (16 + 4), fuse 8->6 (48 + 6), head 6->3 (18 + 3)
    assert (pruned.image[0].out_channels, pruned.meta[0].out_features) == (4, 4)
    assert (pruned.fuse.in_features, pruned.fuse.out_features) == (8, 6)
    assert ts.count_parameters(model) == 80 + 40 + 204 + 39 == 363
    assert ts.count_parameters(pruned) == 40 + 20 + 54 + 21 == 135
    assert ts.count_macs(pruned, task.inputs(1)).macs == 4 * 9 * 64 + 16 + 48 + 18
    path = tmp_path / "pruned.safetensors"
    footprint = ts.measure(pruned, task, artifact=path, latency=False)
    reloaded = ts.load(path, model=TwoInputNet())
    with torch.no_grad():
        assert torch.equal(call_model(reloaded, inputs), call_model(pruned.eval(), inputs))
    assert task.evaluate(reloaded) == pytest.approx(footprint.metric, abs=1e-12)


def test_several_inputs_in_a_tensor_dataset_is_a_clear_error() -> None:
    """A TensorDataset(images, meta, labels) gives the model its first tensor only."""
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(8, 1, 8, 8, generator=generator),
        torch.randn(8, 4, generator=generator),
        torch.randint(0, 3, (8,), generator=generator),
    )
    task = ts.Task(
        name="flat", model=_two_input_net, test=data, train_config=ts.TrainConfig(epochs=0)
    )
    with pytest.raises(ts.ShapeError) as info:
        apply(task.build_model(), CONFIGS["channel_pruning"](ratio=0.5), task)
    assert str(info.value) == (
        "channel pruning cannot call the model on the task's example inputs "
        "(TwoInputNet.forward() missing 1 required positional argument: 'meta'); a model "
        "with several inputs needs batches ((input1, input2, ...), target) or dicts of "
        "keyword arguments (a TensorDataset gives only its first tensor)"
    )


@pytest.mark.parametrize(
    ("gated", "message"),
    [
        ({"b": []}, "has 'gated.b' = list, expected an object"),
        ({"b": {"channels": 4}}, "'gated.b' without exactly 'channels' and 'branches'"),
        ({"b": {"channels": 0, "branches": []}}, "'gated.b.channels' = 0, expected > 0"),
        ({"b": {"channels": 4, "branches": ["original"]}}, "without 2+ branches, one 'original'"),
        ({"b": {"channels": 4, "branches": [{}, {}]}}, "without 2+ branches, one 'original'"),
        (
            {"b": {"channels": 4, "branches": ["original", 3]}},
            "'gated.b.branches.1' = int, expected an object",
        ),
        ({"b": {"channels": 10**12, "branches": ["original", {"type": "Identity"}]}}, "more than"),
    ],
)
def test_hostile_gated_records_are_one_line_errors(gated, message) -> None:
    from torchslim.spec import CHECKPOINT_FORMAT, validate_spec

    spec = {"format": CHECKPOINT_FORMAT, "gated": gated}
    with pytest.raises(ts.CheckpointError) as info:
        validate_spec(spec, "checkpoint f.safetensors", 10_000)
    assert message in str(info.value) and "\n" not in str(info.value)
    good = {"b": {"channels": 4, "branches": ["original", {"type": "Identity"}]}}
    assert validate_spec({"format": CHECKPOINT_FORMAT, "gated": good}, "f", 10_000)["gated"]


def test_records_rebuilding_every_layer_still_refuse_another_original(tmp_path: Path) -> None:
    """A 50 % pruned ViT replica records every layer and tensor it changed, so a wider ViT
    would otherwise load it silently (with its own softmax temperature): the file keeps the
    original's shapes of what its records replace, and the first one that differs is named."""
    from test_patterns import ViTReplica, _random_bn

    original = _random_bn(ViTReplica())
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 10)
    task = ts.Task(name="vit", model=original, test=data, train_config=ts.TrainConfig(epochs=0))
    pruned = apply(original, CONFIGS["channel_pruning"](ratio=0.5), task)
    path = tmp_path / "vit.safetensors"
    ts.measure(pruned, task, artifact=path, latency=False)
    shapes = ts.checkpoint.read_spec(path)["original_shapes"]
    assert shapes["cls_token"] == [1, 1, 32] and shapes["blocks.0.attn.qkv.weight"] == [96, 32]
    with pytest.raises(ts.CheckpointError) as info:
        ts.load(path, model=ViTReplica(dim=48))
    assert str(info.value) == (
        f"checkpoint {path} was compressed from another architecture: cls_token has shape "
        "(1, 1, 32) in the original it records but (1, 1, 48) in the model given; pass the "
        "model it was compressed from"
    )
    assert torch.equal(ts.load(path, model=ViTReplica)(data.tensors[0]), pruned(data.tensors[0]))
