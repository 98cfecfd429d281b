"""Quantization math: integer grids, quantize / dequantize, fake quantization, observers, SQNR.

A uniform ("discrete") quantizer maps a real value ``x`` to an integer
``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and back to
``(q - zero_point) * scale``. Inside the grid's range the round trip is off by at
most ``scale / 2``.

* symmetric grids are signed and restricted (``[-(2^(b-1) - 1), 2^(b-1) - 1]``,
  zero point 0), so positive and negative values get the same resolution;
* asymmetric grids are unsigned (``[0, 2^b - 1]``) with a zero point, and always
  contain 0 exactly (padding and ReLU outputs stay exact).

Scales are per tensor, or per channel along ``axis`` (output channels of a weight).
Observers watch tensors and choose the range: min-max, moving-average min-max,
percentile, or the range that minimizes the quantization MSE.
"""

from __future__ import annotations

import math

import torch

from torchslim.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 8
OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
_EPS = 1e-12


def check_bits(bits: int, field: str = "bits") -> int:
    """Raise a ConfigError unless ``bits`` is an int in 2..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(
            f"{field} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}; "
            "use 8 for int8 or 2-7 for low-bit weights"
        )
    return bits


REDUCED_SYMMETRIC = (-64, 64)
"""The 8-bit weight grid of ``reduce_range`` (ONNX Runtime's reduced int8 range): with
weights within +-64, two uint8 x int8 products never exceed int16 (2 * 255 * 64 = 32,640),
so the u8s8 kernels of x86 CPUs without VNNI (VPMADDUBSW, which sums pairs of products
into a saturating int16) compute exactly what the simulation computes."""


def qrange(bits: int, symmetric: bool, reduce_range: bool = False) -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)`` for a bit width and scheme.

    ``reduce_range`` narrows an 8-bit grid to 7 bits the way ONNX Runtime does
    (symmetric ``[-64, 64]``, asymmetric ``[0, 127]``); narrower grids are unchanged.
    """
    check_bits(bits)
    if reduce_range and bits == 8:
        return REDUCED_SYMMETRIC if symmetric else (0, 127)
    if symmetric:
        return -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _along(values: torch.Tensor, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel ``values`` so they broadcast along ``axis`` of ``like``."""
    if axis is None or values.dim() == 0:
        return values
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape)


def compute_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    bits: int,
    symmetric: bool,
    reduce_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (tensors, per channel or scalar)."""
    qmin, qmax = qrange(bits, symmetric, reduce_range)
    min_val = torch.minimum(min_val.float(), torch.zeros_like(min_val, dtype=torch.float32))
    max_val = torch.maximum(max_val.float(), torch.zeros_like(max_val, dtype=torch.float32))
    if symmetric:
        amax = torch.maximum(min_val.abs(), max_val)
        scale = (amax / qmax).clamp_min(_EPS)
        return scale, torch.zeros_like(scale)
    scale = ((max_val - min_val) / (qmax - qmin)).clamp_min(_EPS)
    zero_point = (qmin - torch.round(min_val / scale)).clamp(qmin, qmax)
    return scale, zero_point


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes (int32) of ``x`` on the grid."""
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
) -> torch.Tensor:
    """Real values of integer codes: ``(q - zero_point) * scale``."""
    s, z = _along(scale, q, axis), _along(zero_point, q, axis)
    return (q.float() - z) * s


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value, gradient multiplied by ``factor`` (LSQ's step-size gradient scaling)."""
    return (x - x * factor).detach() + x * factor


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize then dequantize, differentiable.

    The gradient w.r.t. ``x`` is 1 inside the grid's range and 0 outside
    (straight-through estimator with clipping); the gradient w.r.t. ``scale`` is
    LSQ's (Esser et al., 2020), so a learnable scale trains with this same function.
    """
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    q = torch.clamp(round_ste(x / s) + z, qmin, qmax)
    return (q - z) * s


def sqnr(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)``."""
    reference = reference.detach().float()
    noise = float((reference - approximation.detach().float()).pow(2).sum())
    signal = float(reference.pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, _EPS) / noise)


# ------------------------------------------------------------------ observers


def _reduce_dims(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as (channels, values) for per-channel statistics, or (1, values) per tensor."""
    if axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, axis).reshape(x.shape[axis], -1)


class Observer:
    """Watches tensors and chooses a quantization range (plain object, not part of state dicts).

    Args:
        bits: bit width of the grid.
        symmetric: symmetric signed grid, or asymmetric unsigned grid with a zero point.
        axis: channel axis for per-channel ranges; None for one range per tensor.
        reduce_range: an 8-bit grid narrowed to 7 bits (see :func:`qrange`).
    """

    def __init__(
        self, bits: int, symmetric: bool, axis: int | None = None, reduce_range: bool = False
    ) -> None:
        self.bits = check_bits(bits)
        self.symmetric = symmetric
        self.axis = axis
        self.reduce_range = reduce_range
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        """Whether the observer has seen data."""
        return self.min_val is not None

    def update(self, x: torch.Tensor) -> None:
        """Record one tensor."""
        flat = _reduce_dims(x.detach().float(), self.axis)
        self._combine(flat.amin(dim=1), flat.amax(dim=1))

    def _combine(self, low: torch.Tensor, high: torch.Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = low, high
        else:
            self.min_val = torch.minimum(self.min_val, low)
            self.max_val = torch.maximum(self.max_val, high)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen ``(min, max)``; per channel, or one-element tensors per tensor."""
        if self.min_val is None or self.max_val is None:
            raise ConfigError(
                "an observer was asked for a range before seeing data; calibrate first"
            )
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point (scalars per tensor, vectors per channel)."""
        low, high = self.range()
        scale, zero_point = compute_qparams(low, high, self.bits, self.symmetric, self.reduce_range)
        if self.axis is None:
            return scale.reshape(()), zero_point.reshape(())
        return scale, zero_point


class MinMaxObserver(Observer):
    """The smallest and largest value ever seen."""


class MovingAverageObserver(Observer):
    """Exponential moving average of each batch's min and max (robust to one odd batch)."""

    def __init__(
        self, bits: int, symmetric: bool, axis: int | None = None, momentum: float = 0.1
    ) -> None:
        super().__init__(bits, symmetric, axis)
        self.momentum = momentum

    def _combine(self, low: torch.Tensor, high: torch.Tensor) -> None:
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = low, high
            return
        self.min_val = self.min_val + self.momentum * (low - self.min_val)
        self.max_val = self.max_val + self.momentum * (high - self.max_val)


class PercentileObserver(Observer):
    """Mean over batches of each batch's ``percentile`` / ``100 - percentile`` values."""

    def __init__(
        self, bits: int, symmetric: bool, axis: int | None = None, percentile: float = 99.99
    ) -> None:
        super().__init__(bits, symmetric, axis)
        self.percentile = percentile
        self.batches = 0
        self._low_sum: torch.Tensor | None = None
        self._high_sum: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        flat = _reduce_dims(x.detach().float(), self.axis)
        count = flat.shape[1]
        high_k = max(1, min(count, math.ceil(count * self.percentile / 100)))
        low_k = max(1, min(count, count - high_k + 1))
        low = flat.kthvalue(low_k, dim=1).values
        high = flat.kthvalue(high_k, dim=1).values
        self._low_sum = low if self._low_sum is None else self._low_sum + low
        self._high_sum = high if self._high_sum is None else self._high_sum + high
        self.batches += 1
        self.min_val, self.max_val = self._low_sum / self.batches, self._high_sum / self.batches


class MSEObserver(Observer):
    """The clipping range that minimizes the mean squared quantization error.

    Keeps a random sample of the values seen (up to ``max_samples`` per channel) and
    searches ``grid`` shrink factors of the min-max range, spaced geometrically from
    1 down to 1/1000 (outliers can call for a much smaller range).
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        axis: int | None = None,
        max_samples: int = 65536,
        grid: int = 60,
    ) -> None:
        super().__init__(bits, symmetric, axis)
        self.max_samples = max_samples
        self.grid = grid
        self._sample: torch.Tensor | None = None
        self._generator = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = _reduce_dims(x.detach().float(), self.axis)
        sample = flat if self._sample is None else torch.cat([self._sample, flat], dim=1)
        if sample.shape[1] > self.max_samples:
            keep = torch.randperm(sample.shape[1], generator=self._generator)[: self.max_samples]
            sample = sample[:, keep]
        self._sample = sample

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = super().range()
        assert self._sample is not None
        qmin, qmax = qrange(self.bits, self.symmetric, self.reduce_range)
        best_err = torch.full_like(low, math.inf)
        best_low, best_high = low.clone(), high.clone()
        for step in range(self.grid):
            ratio = 1e-3 ** (step / (self.grid - 1))
            cand_low, cand_high = low * ratio, high * ratio
            scale, zero_point = compute_qparams(
                cand_low, cand_high, self.bits, self.symmetric, self.reduce_range
            )
            restored = fake_quantize(self._sample, scale, zero_point, qmin, qmax, axis=0)
            err = (restored - self._sample).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_low = torch.where(better, cand_low, best_low)
            best_high = torch.where(better, cand_high, best_high)
        return best_low, best_high


def make_observer(
    name: str,
    bits: int,
    symmetric: bool,
    axis: int | None = None,
    percentile: float = 99.99,
    reduce_range: bool = False,
) -> Observer:
    """An observer by name: ``minmax``, ``moving_average``, ``percentile`` or ``mse``."""
    observer: Observer
    if name == "minmax":
        observer = MinMaxObserver(bits, symmetric, axis)
    elif name == "moving_average":
        observer = MovingAverageObserver(bits, symmetric, axis)
    elif name == "percentile":
        observer = PercentileObserver(bits, symmetric, axis, percentile)
    elif name == "mse":
        observer = MSEObserver(bits, symmetric, axis)
    else:
        raise ConfigError(f"observer {name!r} is unknown; use one of {', '.join(OBSERVERS)}")
    observer.reduce_range = reduce_range
    return observer
