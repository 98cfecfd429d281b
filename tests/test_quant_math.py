"""Quantization math: error bounds, per-channel vs per-tensor, observers, SQNR, STE."""

from __future__ import annotations

import math

import pytest
import torch

import torchslim as ts
from torchslim.techniques.quant_math import (
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    PercentileObserver,
    compute_qparams,
    dequantize,
    fake_quantize,
    make_observer,
    qrange,
    quantize,
    sqnr,
)
from torchslim.techniques.quantization import QAT, StaticQuant


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric):
    x = torch.linspace(-3.0, 5.0, 1001)
    scale, zero_point = compute_qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        assert (qmin, qmax) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
        assert float(scale) == pytest.approx(5.0 / qmax)
        assert float(zero_point) == 0
    else:
        assert (qmin, qmax) == (0, 2**bits - 1)
        assert float(scale) == pytest.approx(8.0 / (2**bits - 1))
    codes = quantize(x, scale, zero_point, qmin, qmax)
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    error = (dequantize(codes, scale, zero_point) - x).abs().max()
    assert float(error) <= float(scale) / 2 * (1 + 1e-5)
    # and the bound is tight: some value is almost half a step away
    assert float(error) >= float(scale) / 2 * 0.9
    assert torch.equal(
        fake_quantize(x, scale, zero_point, qmin, qmax), dequantize(codes, scale, zero_point)
    )


def test_per_channel_beats_per_tensor_with_one_outlier_channel():
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    weight[3] *= 100
    qmin, qmax = qrange(8, True)
    per_tensor = MinMaxObserver(8, True)
    per_tensor.update(weight)
    per_channel = MinMaxObserver(8, True, axis=0)
    per_channel.update(weight)
    tensor_out = fake_quantize(weight, *per_tensor.qparams(), qmin, qmax)
    channel_out = fake_quantize(weight, *per_channel.qparams(), qmin, qmax, axis=0)
    normal = [i for i in range(8) if i != 3]
    tensor_db = sqnr(weight[normal], tensor_out[normal])
    channel_db = sqnr(weight[normal], channel_out[normal])
    # 8 bits on a well-scaled channel give ~ 6.02 * 8 - 10 dB; the outlier costs the
    # per-tensor grid about 20 log10(100) = 40 dB on the other channels
    assert channel_db > 35
    assert channel_db - tensor_db > 30


def test_sqnr_of_a_known_error():
    reference = torch.ones(100)
    assert sqnr(reference, reference * 1.1) == pytest.approx(20.0)
    assert sqnr(reference, reference) == math.inf


def test_observers_choose_sensible_ranges():
    values = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    values[0] = 1000.0
    minmax = make_observer("minmax", 8, False)
    percentile = make_observer("percentile", 8, False, percentile=99.9)
    mse = make_observer("mse", 4, True)
    for observer in (minmax, percentile, mse):
        observer.update(values)
    assert isinstance(percentile, PercentileObserver) and isinstance(mse, MSEObserver)
    assert float(minmax.range()[1]) == 1000.0
    assert 2.5 < float(percentile.range()[1]) < 4.5
    # on a Gaussian, 4-bit MSE clipping beats the full range (optimum ~2.5 sigma)
    gaussian = values[1:]
    mse, full = make_observer("mse", 4, True), make_observer("minmax", 4, True)
    mse.update(gaussian)
    full.update(gaussian)
    assert 1.5 < float(mse.range()[1]) < 0.8 * float(full.range()[1])
    qmin, qmax = qrange(4, True)
    errors = [
        float((fake_quantize(gaussian, *o.qparams(), qmin, qmax) - gaussian).pow(2).mean())
        for o in (mse, full)
    ]
    assert errors[0] < 0.8 * errors[1]
    moving = MovingAverageObserver(8, False, momentum=0.5)
    moving.update(torch.tensor([0.0, 2.0]))
    moving.update(torch.tensor([0.0, 4.0]))
    assert float(moving.range()[1]) == pytest.approx(3.0)
    with pytest.raises(ts.ConfigError, match="observer 'kl' is unknown"):
        make_observer("kl", 8, True)


def test_straight_through_gradient_is_one_inside_and_zero_outside():
    scale, zero_point = torch.tensor(0.1), torch.tensor(0.0)
    x = torch.tensor([0.03, -0.26, 50.0, -50.0], requires_grad=True)
    fake_quantize(x, scale, zero_point, -127, 127).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [1, 9, 0, 16, 4.0])
def test_bits_outside_2_to_8_are_rejected(bad):
    with pytest.raises(ts.ConfigError, match=r"bits must be an integer from 2 to 8"):
        StaticQuant(bits=bad)
    with pytest.raises(ts.ConfigError, match=r"act_bits must be an integer from 2 to 8"):
        QAT(act_bits=bad)
    with pytest.raises(ts.ConfigError, match=r"layer_bits for 'fc'"):
        StaticQuant(layer_bits=(("fc", bad),))
