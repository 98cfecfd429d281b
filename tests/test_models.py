"""Reference architectures: shapes, hand-counted parameters, registry errors, traceability."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models import (
    MLP,
    MNIST1DCNN,
    MODELS,
    VGG,
    ConcatResNet,
    LeNet5,
    MNIST1DSeparable,
    MobileNet,
    ResNet,
    StagedCNN,
    build_model,
    list_models,
    register_model,
)

EXPECTED_MODELS = {
    "lenet5": ((1, 28, 28), LeNet5),
    "mlp": ((64,), MLP),
    "mnist1d_cnn": ((1, 40), MNIST1DCNN),
    "mnist1d_separable": ((1, 40), MNIST1DSeparable),
    "mobilenet_small": ((3, 32, 32), MobileNet),
    "resnet_concat": ((3, 32, 32), ConcatResNet),
    "resnet_small": ((3, 32, 32), ResNet),
    "staged_cnn": ((1, 40), StagedCNN),
    "vgg_cifar": ((3, 32, 32), VGG),
}
BATCH = 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_lists_every_model() -> None:
    assert list_models() == sorted(EXPECTED_MODELS)
    assert set(MODELS) == set(EXPECTED_MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_default_forward_shape(name: str) -> None:
    shape, cls = EXPECTED_MODELS[name]
    model = build_model(name)
    assert type(model) is cls
    assert model.input_shape == shape
    assert model.num_classes == 10
    out = model(torch.randn(BATCH, *shape))
    assert out.shape == (BATCH, 10)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_symbolic_trace_matches_eager(name: str) -> None:
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(BATCH, *model.input_shape)
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_eval_outputs_are_deterministic(name: str) -> None:
    model = build_model(name).eval()
    x = torch.randn(BATCH, *model.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_same_seed_same_weights() -> None:
    torch.manual_seed(1)
    a = build_model("mnist1d_cnn")
    torch.manual_seed(1)
    b = build_model("mnist1d_cnn")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_mnist1d_cnn_parameter_count() -> None:
    c, k = 25, 10
    conv1 = 1 * c * 5 + c  # 150
    conv2 = c * c * 3 + c  # 1,900
    conv3 = c * c * 3 + c  # 1,900
    fc = (c * 5) * k + k  # 1,260
    assert conv1 + conv2 + conv3 + fc == 5210
    assert n_params(MNIST1DCNN()) == 5210


def test_mnist1d_cnn_other_lengths() -> None:
    model = MNIST1DCNN(channels=8, num_classes=3, input_length=72)  # 72 → 35 → 18 → 9
    assert model.classifier.in_features == 8 * 9
    assert model(torch.randn(BATCH, 1, 72)).shape == (BATCH, 3)


def test_mlp_parameter_count_and_input_shapes() -> None:
    expected = (64 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
    assert expected == 50610
    model = MLP()
    assert n_params(model) == expected
    assert model(torch.randn(BATCH, 64)).shape == (BATCH, 10)
    assert model(torch.randn(BATCH, 1, 8, 8)).shape == (BATCH, 10)


def test_mlp_custom_hidden() -> None:
    model = build_model("mlp", in_features=40, hidden=[32], num_classes=4)
    assert n_params(model) == (40 * 32 + 32) + (32 * 4 + 4)
    assert model(torch.randn(BATCH, 40)).shape == (BATCH, 4)


def _vgg_param_count(widths: list[int], in_channels: int = 3, classes: int = 10) -> int:
    """Bias-free 3x3 convs, BN weight+bias per channel, 2x2 spatial after four pools."""
    total, previous = 0, in_channels
    for w in widths:
        total += previous * w * 3 * 3 + 2 * w
        previous = w
    return total + (previous * 2 * 2 * 512 + 512) + (512 * classes + classes)


def test_vgg_parameter_count() -> None:
    convs = (
        3 * 64 * 9
        + 64 * 64 * 9
        + 64 * 128 * 9
        + 128 * 128 * 9
        + 128 * 256 * 9
        + 256 * 256 * 9
        + 256 * 512 * 9
        + 512 * 512 * 9
    )  # 4,683,456 (no conv bias: BatchNorm follows every conv)
    bns = 2 * (64 + 64 + 128 + 128 + 256 + 256 + 512 + 512)  # 3,840
    fcs = (512 * 2 * 2 * 512 + 512) + (512 * 10 + 10)  # 1,049,088 + 5,130
    assert convs + bns + fcs == 5741514
    assert n_params(VGG()) == 5741514
    assert _vgg_param_count([64, 64, 128, 128, 256, 256, 512, 512]) == 5741514


def test_vgg_width_mult_halves_conv_widths() -> None:
    model = build_model("vgg_cifar", width_mult=0.5)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [32, 32, 64, 64, 128, 128, 256, 256]
    assert n_params(model) == _vgg_param_count(widths)
    assert model(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)


def test_vgg_other_input_size() -> None:
    model = VGG(in_channels=1, num_classes=2, widths=[4] * 8, input_size=64, dropout=0.0)
    assert model.classifier[1].in_features == 4 * 4 * 4
    assert model(torch.randn(BATCH, 1, 64, 64)).shape == (BATCH, 2)


def test_resnet_structure() -> None:
    model = ResNet(blocks_per_stage=[2, 1, 1])
    assert [len(stage) for stage in model.stages] == [2, 1, 1]
    first, second = model.stages[0]
    assert isinstance(first.shortcut, nn.Identity) and isinstance(second.shortcut, nn.Identity)
    assert isinstance(model.stages[1][0].shortcut, nn.Sequential)  # 16 → 32, stride 2
    assert model.stages[2][0].conv1.stride == (2, 2)
    assert model.fc.in_features == 64


def test_resnet_concat_has_add_and_cat() -> None:
    graph = torch.fx.symbolic_trace(build_model("resnet_concat")).graph
    targets = {node.target for node in graph.nodes if node.op == "call_function"}
    assert torch.cat in targets
    assert any(getattr(t, "__name__", "") == "add" for t in targets)
    stem = build_model("resnet_concat").stem
    assert stem(torch.randn(BATCH, 3, 8, 8)).shape == (BATCH, 16, 8, 8)


def test_mobilenet_width_mult_and_strides() -> None:
    model = build_model("mobilenet_small", width_mult=0.5)
    pointwise = [block.pointwise.out_channels for block in model.blocks]
    assert pointwise == [32, 64, 64, 128, 128]
    assert model.stem[0].out_channels == 16
    depthwise = model.blocks[1].depthwise
    assert depthwise.groups == depthwise.in_channels == 32 and depthwise.stride == (2, 2)
    features = model.blocks(model.stem(torch.randn(BATCH, 3, 32, 32)))
    assert features.shape == (BATCH, 128, 8, 8)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_rebuild_from_json_kwargs(name: str) -> None:
    kwargs = {"num_classes": 3}
    if name == "mobilenet_small":
        kwargs["blocks"] = [[8, 1], [16, 2]]
    elif name.startswith("resnet"):
        kwargs.update(widths=[8, 16], blocks_per_stage=[1, 1])
    elif name == "vgg_cifar":
        kwargs["widths"] = [8] * 8
    stored = json.loads(json.dumps({"name": name, "kwargs": kwargs}))
    a = build_model(stored["name"], **stored["kwargs"])
    b = build_model(name, **kwargs)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a(torch.randn(BATCH, *a.input_shape)).shape == (BATCH, 3)


def test_unknown_model_lists_available_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet50'.*mnist1d_cnn"):
        build_model("resnet50")


def test_bad_keyword_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model 'mlp' has no option 'depth'.*hidden"):
        build_model("mlp", depth=3)


def test_non_json_kwarg_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"option 'channels' .* plain JSON value"):
        build_model("mnist1d_cnn", channels=torch.tensor(8))


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("mnist1d_cnn", {"channels": 0}, r"channels must be a positive int, got 0"),
        ("mnist1d_cnn", {"num_classes": -1}, r"num_classes must be a positive int"),
        ("mnist1d_cnn", {"input_length": 2}, r"input_length 2 is too short"),
        ("mlp", {"hidden": [300, 0]}, r"hidden\[1\] must be a positive int"),
        ("mlp", {"in_features": 1.5}, r"in_features must be a positive int"),
        ("vgg_cifar", {"widths": [64] * 7}, r"widths must have 8 entries"),
        ("vgg_cifar", {"width_mult": 0}, r"width_mult must be a finite number > 0"),
        ("vgg_cifar", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ("vgg_cifar", {"input_size": 8}, r"input_size 8 is too small"),
        ("resnet_small", {"widths": [16, 0, 64]}, r"widths\[1\] must be a positive int"),
        ("resnet_small", {"blocks_per_stage": [1, 1]}, r"blocks_per_stage has 2 entries"),
        ("resnet_concat", {"widths": [1, 32, 64]}, r"widths\[0\] must be >= 2"),
        ("mobilenet_small", {"blocks": [[64, 0]]}, r"blocks\[0\]\[1\] \(stride\) must be"),
        ("mobilenet_small", {"blocks": [64, 128]}, r"blocks\[0\] must be an \[out_channels"),
        ("mobilenet_small", {"width_mult": -0.5}, r"width_mult must be a finite number > 0"),
    ],
)
def test_invalid_values_raise_config_error(name: str, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_model(name, **kwargs)


def test_tiny_width_mult_keeps_at_least_one_channel() -> None:
    model = build_model("vgg_cifar", width_mult=0.001)
    assert all(m.out_channels == 1 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_duplicate_registration_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'mlp' is already registered"):
        register_model("mlp")(lambda: nn.Identity())
    assert MODELS["mlp"] is MLP
