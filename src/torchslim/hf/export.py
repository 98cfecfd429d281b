"""ONNX export of transformer encoders, ONNX Runtime int8, parity checks.

* :func:`export_onnx` writes an ONNX graph with inputs ``input_ids``, ``attention_mask``
  (and ``token_type_ids`` when the model uses them), dynamic ``batch`` and ``sequence``
  axes, and one output (``embeddings`` or ``logits``). :class:`~torchslim.techniques.int8_linear.Int8Linear`
  layers are exported as float MatMuls holding their dequantized weights (ONNX Runtime's
  dynamic quantizer turns them back into the same per-channel int8 grid);
  :class:`~torchslim.techniques.embedding_quant.QuantEmbedding` tables stay packed (Gather on uint8 codes).
* :func:`export_ort_int8` -- fp32 export, then ``quantize_dynamic(per_channel=True)`` of the
  MatMuls (``quantize_gather=True`` also quantizes float embedding tables to 8 bits, as
  ONNX Runtime's default does).
* :func:`ort_default_int8` -- ONNX Runtime's default dynamic int8 of an fp32 file (the peer).
* :class:`OrtEncoder` runs an ``.onnx`` file behind the model's keyword interface, so the
  tasks' metrics run on the deployed artifact.

Exporting never changes the user's model: the exporter works on a deep copy (put in eval
mode), and the modes of every submodule of the original are checked and restored. The copy
computes attention the plain way (``attn_implementation="eager"``): PyTorch's fused
``scaled_dot_product_attention`` exports with extra masking ops (``IsNaN`` / ``Where``) that
made the ONNX Runtime graph slower at batch 1 (MiniLM-L6, 128 tokens, 1 thread, interleaved:
30.0 vs 31.1 ms fp32, 13.0 vs 14.0 ms dynamic int8); the outputs agree to float rounding.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.export.onnx import OrtSession, quantize_onnx, session_runner
from torchslim.export.onnx import export_onnx as generic_export_onnx
from torchslim.fileio import atomic_path
from torchslim.measure import register_runtime
from torchslim.progress import quiet_logs

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 17


@contextmanager
def modes_preserved(model: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of every submodule of ``model`` on exit."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def export_copy(model: nn.Module, float_linears: bool = True) -> nn.Module:
    """An eval-mode copy for export: int8 Linear layers back to float, embeddings kept packed."""
    from torchslim.techniques.fake_quant import set_module
    from torchslim.techniques.int8_linear import Int8Linear

    with modes_preserved(model):
        plain = copy.deepcopy(model)
    _eager_attention(plain)
    if float_linears:
        for name, module in list(plain.named_modules()):
            if isinstance(module, Int8Linear):
                set_module(plain, name, module.to_float())
    return plain.eval()


def _eager_attention(model: nn.Module) -> None:
    """Switch every Hugging Face model inside ``model`` to plain (eager) attention."""
    for module in model.modules():
        config = getattr(module, "config", None)
        setter = getattr(module, "set_attn_implementation", None)
        if callable(setter) and getattr(config, "_attn_implementation", "eager") != "eager":
            try:
                setter("eager")
            except (ValueError, ImportError):  # an architecture without eager attention
                pass


def _ordered_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    if not isinstance(inputs, dict) or "input_ids" not in inputs:
        raise ConfigError(
            "transformer export needs dict inputs with input_ids and attention_mask "
            "(e.g. task.inputs(2))"
        )
    names = [n for n in INPUT_ORDER if n in inputs]
    if "token_type_ids" in names and not getattr(model, "uses_token_types", True):
        names.remove("token_type_ids")
    return names


def export_onnx(
    model: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export an encoder / classifier to fp32 ONNX with dynamic batch and sequence axes.

    The one exporter (:func:`torchslim.export.onnx.export_onnx`) with the transformer
    specifics as its options: token inputs in :data:`INPUT_ORDER`, ``batch`` and
    ``sequence`` axes, the output named ``embeddings`` or ``logits``, and :func:`export_copy`
    (int8 Linear layers to float, embedding tables kept packed, eager attention).

    Raises:
        UnsupportedError: the exporter cannot translate an operator (named in the message).
    """
    names = _ordered_inputs(model, example_inputs)
    output = "embeddings" if type(model).__name__ == "SentenceEncoder" else "logits"
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"}
    with modes_preserved(model):
        return generic_export_onnx(
            model,
            example_inputs,
            path,
            opset,
            input_names=names,
            output_name=output,
            dynamic_axes=axes,
            float_copy=export_copy,
        )


def quantize_dynamic_int8(
    fp32_path: str | Path,
    path: str | Path,
    quantize_gather: bool = False,
    per_channel: bool = True,
    reduce_range: bool = True,
) -> Path:
    """ONNX Runtime dynamic int8 (per-channel weights) of the MatMuls (and float Gathers).

    ``reduce_range`` (default) puts the weights on ONNX Runtime's 7-bit grid ``[-64, 64]``,
    which its u8s8 kernels compute exactly on every x86 CPU; False uses the full int8
    range, exact only with VNNI / AMX or on ARM (docs/techniques.md).
    """
    return quantize_onnx(
        fp32_path,
        path,
        mode="dynamic",
        per_channel=per_channel,
        reduce_range=reduce_range,
        op_types=("MatMul", "Gather") if quantize_gather else ("MatMul",),
    )


def ort_default_int8(fp32_path: str | Path, path: str | Path) -> Path:
    """ONNX Runtime's default dynamic int8 (per-channel) of an fp32 file: the peer reference."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_logs(""), atomic_path(path) as out:
        quantize_dynamic(str(fp32_path), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return Path(path)


def export_ort_int8(
    model: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    path: str | Path,
    quantize_gather: bool = False,
    portable: bool = True,
) -> Path:
    """Export to ONNX and quantize the MatMuls to int8 (per-channel) for ONNX Runtime.

    With ``portable`` (default) the weights use ONNX Runtime's 7-bit grid ``[-64, 64]``, so
    the file computes the same integers on every CPU: an
    :class:`~torchslim.techniques.int8_linear.Int8Linear` made with ``reduce_range`` (the default for
    ``act="tensor"``) is re-quantized onto its own integers; one on the full int8 grid is
    re-quantized to 7 bits (a warning says so). ``portable=False`` keeps the full range,
    exact only on CPUs with VNNI / AMX and on ARM.
    """

    from torchslim.techniques.int8_linear import Int8Linear

    wide = [n for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.qmax > 64]
    if portable and wide:
        warnings.warn(
            f"{len(wide)} int8 Linear layer(s) (first: {wide[0]}) use the full int8 grid; the "
            "portable ONNX Runtime file re-quantizes them to 7 bits; use linear_int8 with "
            "act='tensor' (reduce_range) for a file that computes the simulated integers",
            stacklevel=2,
        )
    with tempfile.TemporaryDirectory(prefix="torchslim-hf-onnx-") as tmp:
        fp32 = export_onnx(model, example_inputs, Path(tmp) / "fp32.onnx")
        return quantize_dynamic_int8(
            fp32, path, quantize_gather=quantize_gather, reduce_range=portable
        )


def quantize_nbits(
    fp32_path: str | Path,
    path: str | Path,
    bits: int = 8,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    quantize_gather: bool = False,
) -> Path:
    """ONNX Runtime block-wise weight quantization (``MatMulNBits``) of the MatMuls.

    Weights get one scale per ``block_size`` input values (``bits`` 4 or 8); with
    ``accuracy_level=4`` ONNX Runtime also quantizes each activation block to int8 at run time
    (block-wise, so outlier channels cost far less precision than a per-tensor scale).
    ``quantize_gather`` quantizes float embedding Gathers block-wise too (``GatherBlockQuantized``).
    """
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if bits not in (4, 8):
        raise ConfigError(f"MatMulNBits bits must be 4 or 8, got {bits}")
    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        bits=bits,
        op_types_to_quantize=("MatMul", "Gather") if quantize_gather else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(fp32_path)), algo_config=config)
    with quiet_logs("", nbits.__name__):
        quantizer.process()
    with atomic_path(path) as out:
        quantizer.model.save_model_to_file(str(out), False)
    return Path(path)


def export_ort_nbits(
    model: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    path: str | Path,
    **options: Any,
) -> Path:
    """Export to ONNX, then :func:`quantize_nbits` (options: bits, block_size, ...)."""
    with tempfile.TemporaryDirectory(prefix="torchslim-hf-onnx-") as tmp:
        fp32 = export_onnx(model, example_inputs, Path(tmp) / "fp32.onnx")
        return quantize_nbits(fp32, path, **options)


def torchao_model(model: nn.Module, mode: str = "dynamic") -> nn.Module:
    """A copy for PyTorch int8 speed: int8 Linear layers back to float, then torchao int8.

    torchao re-quantizes each Linear with the same symmetric per-channel int8 grid (and
    per-token dynamic int8 activations); packed embedding tables stay packed. Time it with
    the ``inductor`` runtime (torch.compile with freezing).
    """
    from torchslim.export.torchao_int8 import quantize_torchao

    return quantize_torchao(export_copy(model), mode, inplace=True)


class OrtEncoder(OrtSession):
    """An exported encoder / classifier run by ONNX Runtime, called like the torch model
    (keyword token inputs)."""

    def feeds(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {n: inputs[n].detach().cpu().numpy().astype(np.int64) for n in self.input_names}

    input_feeds = feeds  # a latency runner passes the token dict as is

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        elif "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return torch.from_numpy(self.session.run(None, self.feeds(inputs))[0])


@torch.no_grad()
def parity(model: nn.Module, onnx_model: OrtEncoder, inputs: dict[str, torch.Tensor]) -> float:
    """Max absolute difference between the torch model and the ONNX model on ``inputs``."""
    from torchslim.batches import call_model

    with modes_preserved(model):
        model.eval()
        expected = call_model(model, inputs)
    return float((onnx_model(**inputs) - expected).abs().max())


@register_runtime("onnxruntime-hf")
def _onnxruntime_hf(model: nn.Module, example_inputs: Any) -> Any:
    """Time a transformer on ONNX Runtime: an OrtEncoder as is, a torch model exported to fp32."""
    return session_runner(OrtEncoder, model, example_inputs, export_onnx)
