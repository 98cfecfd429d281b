"""Static / dynamic PTQ, QAT (STE and LSQ), mixed precision, BN folding, bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import torchslim as ts
from helpers import blobs
from torchslim.techniques import ApplyContext, Scope, apply, config_from_dict, config_to_dict
from torchslim.techniques.fake_quant import QuantizedLayer, fold_batchnorm, is_simulated
from torchslim.techniques.quantization import QAT, DynamicQuant, StaticQuant

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_static_int8_keeps_accuracy_and_reports_sqnr(mnist1d):
    task, base = mnist1d
    before = _state(base)
    context = ApplyContext(task=task)
    quantized = apply(base, StaticQuant(bits=8), task, context=context)
    assert _unchanged(base, before) and not is_simulated(base)
    assert is_simulated(quantized)
    assert abs(task.evaluate(quantized) - task.evaluate(base)) <= 0.01
    notes = context.notes["quantization"]
    assert notes["simulated"] is True
    table = notes["sqnr_db"]
    assert set(table["layers"]) == {"features.0", "features.2", "features.4", "classifier"}
    assert table["model_db"] > 30
    for row in table["layers"].values():
        assert row["bits"] == 8 and row["output_db"] > 30 and row["isolated_db"] > 30


def test_four_bit_is_worse_and_the_table_finds_it(mnist1d):
    task, base = mnist1d
    context = ApplyContext(task=task)
    apply(base, StaticQuant(bits=4, act_bits=8), task, context=context)
    table = context.notes["quantization"]["sqnr_db"]
    # 4 bits cost about 4 x 6 dB = 24 dB of SQNR compared with 8 bits
    assert 12 < table["model_db"] < 26
    corrected = ApplyContext(task=task)
    apply(base, StaticQuant(bits=4, bias_correction=True), task, context=corrected)
    assert corrected.notes["quantization"]["sqnr_db"]["model_db"] >= table["model_db"]


def test_mixed_precision_by_name_regex_and_type_and_float_layers(mnist1d):
    task, base = mnist1d
    config = StaticQuant(
        bits=8,
        layer_bits=(("Conv1d", 6), ("re:features\\.[24]", 4), ("classifier", 3)),
        scope=Scope(exclude=("features.2",)),
        sqnr_samples=0,
    )
    quantized = apply(base, config, task)
    bits = {n: m.bits for n, m in quantized.named_modules() if isinstance(m, QuantizedLayer)}
    assert bits == {"features.0": 6, "features.4": 4, "classifier": 3}
    assert isinstance(quantized.features[2], nn.Conv1d)
    with pytest.raises(ts.ConfigError, match="'classifer' names no module"):
        apply(base, StaticQuant(layer_bits=(("classifer", 4),)), task)


def test_config_round_trip_with_layer_bits_and_scope():
    config = QAT(
        bits=4,
        layer_bits=(("fc", 8),),
        layer_act_bits=(("re:conv.*", 6),),
        scope=Scope(exclude=("head",)),
        learn_scales=True,
        distill=True,
        temperature=2.0,
    )
    data = config_to_dict(config)
    assert data["layer_bits"] == [["fc", 8]] and data["layer_act_bits"] == [["re:conv.*", 6]]
    assert config_from_dict(data) == config


def test_batchnorm_folding_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.BatchNorm2d(4),
    )
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert fold_batchnorm(model) == ["1", "4"]
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_qat_recovers_what_3bit_ptq_lost(mnist1d):
    """3 bits, not 4: at 4 bits the effect is about one standard error of the test set.

    The test split has 1,000 samples, so an accuracy near 0.9 has a standard error of
    sqrt(0.9 * 0.1 / 1000) = 0.95 points (1.2 points near 0.8). Measured on an Intel(R)
    Xeon(R) Processor (AVX-512, 1 thread), baseline seed 0 (fp32 0.920), QAT seeds 0-4:
    4-bit PTQ 0.894, 4-bit QAT 0.901-0.912 (gain +0.7 to +1.8 points: a 1-point margin
    failed on seed 0 here), while 3-bit PTQ 0.755 and 3-bit QAT 0.843-0.855 (gain +8.8 to
    +10.0). Baselines trained with seeds 1 and 2 (a proxy for another CPU's rounding,
    which trains a different baseline): 3-bit PTQ 0.731 / 0.694, QAT gain +10.5 to +17.1
    points. The 5-point margins below are >= 4 standard errors and about half the
    smallest gain measured; LSQ (learned scales, 2 epochs) gained +6.7 to +13.7 points at
    3 bits, so its 3-point margin is half its smallest gain.
    """
    task, base = mnist1d
    float_acc = task.evaluate(base)
    ptq_acc = task.evaluate(apply(base, StaticQuant(bits=3, sqnr_samples=0), task))
    qat = apply(base, QAT(bits=3, epochs=3, lr=1e-3, freeze_observers_after=2), task)
    qat_acc = task.evaluate(qat)
    assert ptq_acc < float_acc - 0.05, (ptq_acc, float_acc)  # 3-bit PTQ loses >= 5 points
    assert qat_acc > ptq_acc + 0.05, (qat_acc, ptq_acc)  # QAT wins >= 5 of them back
    lsq = apply(base, QAT(bits=3, epochs=2, lr=1e-3, learn_scales=True), task)
    layer = lsq.features[0]
    assert isinstance(layer.weight_quant.scale, nn.Parameter) and layer.weight_quant.learnable
    assert task.evaluate(lsq) > ptq_acc + 0.03, (task.evaluate(lsq), ptq_acc)


def test_qat_freezes_batchnorm_statistics():
    torch.manual_seed(0)
    task = ts.Task(
        name="bn-blobs",
        model=lambda: nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
        ),
        train=blobs(240, seed=0),
        test=blobs(90, seed=2),
        train_config=ts.TrainConfig(lr=0.05, epochs=2, batch_size=32),
    )
    base = task.baseline(progress=False)
    model = apply(
        base, QAT(epochs=2, fold_bn=False, freeze_bn_after=0, calibration_batches=1), task
    )
    torch.testing.assert_close(model[1].running_mean, base[1].running_mean)
    moving = apply(base, QAT(epochs=1, fold_bn=False, calibration_batches=1), task)
    assert not torch.allclose(moving[1].running_mean, base[1].running_mean)


def test_dynamic_quant_of_linear_and_lstm_needs_no_data():
    torch.manual_seed(0)

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    model = Recurrent().eval()
    x = torch.randn(4, 5, 8)
    context = ApplyContext()
    quantized = apply(model, DynamicQuant(bits=8), context=context)
    assert isinstance(quantized.head, QuantizedLayer)
    weight = quantized.lstm.weight_ih_l0
    distinct = max(len(torch.unique(row)) for row in weight)
    assert distinct <= 255 and not torch.equal(weight, model.lstm.weight_ih_l0)
    assert context.notes["quantization"]["rnn_weights_only"] == {"lstm": 8}
    assert ts.techniques.quant_math.sqnr(model(x), quantized(x)) > 30


def test_unsupported_layers_are_skipped_with_a_warning():
    class WithBilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.pair = nn.Bilinear(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return self.pair(y, y)

    model = WithBilinear()
    context = ApplyContext()
    with pytest.warns(UserWarning, match=r"skipping pair \(Bilinear\): no backend quantizes"):
        quantized = apply(model, DynamicQuant(), context=context)
    assert context.notes["quantization"]["skipped"] == {"pair": "Bilinear"}
    assert isinstance(quantized.pair, nn.Bilinear)
    with (
        pytest.raises(ts.UnsupportedError, match="found no layer to quantize"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        apply(model, DynamicQuant(scope=Scope(include=("pair",))))


def test_calibration_data_missing_or_misshapen(tiny_task):
    model = nn.Sequential(nn.Linear(5, 3))
    before = _state(model)
    with pytest.raises(ts.ConfigError, match="static_quant calibrates on data: pass task="):
        apply(model, StaticQuant())
    with pytest.raises(ts.ShapeError, match=r"calibration data of shape \(\d+, 8\) does not fit"):
        apply(model, StaticQuant(), tiny_task)
    assert _unchanged(model, before)
    assert isinstance(model[0], nn.Linear)


def test_activation_bits_per_layer_by_name_and_type(mnist1d):
    task, base = mnist1d
    context = ApplyContext(task=task)
    config = StaticQuant(
        act_bits=8, layer_act_bits=(("Conv1d", 6), ("features.0", 4)), sqnr_samples=32
    )
    quantized = apply(base, config, task, context=context)
    act = {
        n: m.input_quant.bits for n, m in quantized.named_modules() if isinstance(m, QuantizedLayer)
    }
    assert act == {"features.0": 4, "features.2": 6, "features.4": 6, "classifier": 8}
    layers = context.notes["quantization"]["layers"]
    assert {n: row["act_bits"] for n, row in layers.items()} == act
    assert all(row["bits"] == 8 for row in layers.values())  # weight bits are separate
    # the 4-bit input is the least precise layer input: its isolated SQNR is the lowest
    table = context.notes["quantization"]["sqnr_db"]["layers"]
    assert min(table, key=lambda n: table[n]["isolated_db"]) == "features.0"
    with pytest.raises(ts.ConfigError, match="layer_act_bits for 'classifier'"):
        StaticQuant(layer_act_bits=(("classifier", 9),))
    with pytest.raises(ts.ConfigError, match="'classifer' names no module"):
        apply(base, StaticQuant(layer_act_bits=(("classifer", 4),)), task)


def test_qat_distills_from_the_float_model_or_the_context_teacher(mnist1d):
    """At 3 bits, where one epoch of (KD-)QAT gains many standard errors over PTQ.

    At 4 bits the gain is about one standard error (0.95 points on the 1,000-sample test
    split): measured on an Intel(R) Xeon(R) Processor (AVX-512, 1 thread), baselines trained
    with seeds 0 / 1 / 2 (another CPU trains another baseline) x QAT seeds 0-2, the soft-only
    "guided" run gained -0.7 to +3.6 points over 4-bit PTQ (the old 1-point margin failed
    here: 0.887 vs 0.894 + 0.01). At 3 bits (PTQ 0.755 / 0.731 / 0.694): KD-QAT (T=2,
    alpha=0.5) 0.789-0.828, +5.8 to +11.7 points; guided 0.815-0.870, +8.1 to +17.6; the
    misled model (a teacher one class off) 0.138-0.227 (chance 0.10). Margins: 3 and 5
    points, about half the smallest gain and >= 2 standard errors of the difference; the
    misled model below 0.3 (>= 5 standard errors above the worst) and the distilled one
    at least 0.4 above it (measured >= 0.60).
    """
    task, base = mnist1d
    ptq_acc = task.evaluate(apply(base, StaticQuant(bits=3, sqnr_samples=0), task))
    plain, kd = ApplyContext(task=task), ApplyContext(task=task)
    apply(base, QAT(bits=3, epochs=1, sqnr_samples=0), task, context=plain)
    config = QAT(bits=3, epochs=1, distill=True, temperature=2.0, alpha=0.5, sqnr_samples=0)
    distilled = apply(base, config, task, context=kd)
    assert plain.notes["quantization"]["distilled_from"] is None
    assert kd.notes["quantization"]["distilled_from"] == "float model"
    assert kd.notes["quantization"]["final_loss"] != plain.notes["quantization"]["final_loss"]
    distilled_acc = task.evaluate(distilled)
    assert distilled_acc > ptq_acc + 0.03, (distilled_acc, ptq_acc)  # KD-QAT recovers

    # A context teacher is the one used: a teacher that names the wrong class misleads it.
    class ShiftedTeacher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = copy.deepcopy(base), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.inner(x).roll(1, dims=1)  # confident, and one class off

    teacher = ShiftedTeacher()
    bad = ApplyContext(task=task, teacher=teacher)
    soft_only = dict(bits=3, epochs=1, lr=1e-2, distill=True, temperature=1.0, alpha=1.0)
    misled = apply(base, QAT(**soft_only, sqnr_samples=0), task, context=bad)
    assert bad.notes["quantization"]["distilled_from"] == "context teacher"
    assert teacher.calls >= len(task.loader("train"))
    guided = apply(base, QAT(**soft_only, sqnr_samples=0), task)  # the float model teaches
    misled_acc, guided_acc = task.evaluate(misled), task.evaluate(guided)
    assert misled_acc < 0.3 and distilled_acc > misled_acc + 0.4, (misled_acc, distilled_acc)
    assert guided_acc > ptq_acc + 0.05, (guided_acc, ptq_acc)
    with pytest.raises(ts.ConfigError, match="alpha must be in"):
        QAT(distill=True, alpha=1.5)
