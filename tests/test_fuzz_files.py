"""Property-based fuzzing of checkpoint files: a loaded model or a TorchslimError, nothing else.

Hypothesis generates JSON specs (near-valid ones: real keys with wrong types, huge or negative
sizes, unknown module types, task references to .py files) and raw safetensors headers. Every
outcome must be a loaded model or a :class:`TorchslimError`; no other exception, no import of
a task file, and no model whose tensors exceed what :func:`allocation_limit` allows the file.
"""

from __future__ import annotations

import json
import resource
import struct
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchslim as ts
from torchslim import spec as spec_module
from torchslim.errors import TorchslimError
from torchslim.models import build_model
from torchslim.spec import allocation_limit
from torchslim.tasks import resolve_task

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

sizes = st.one_of(
    st.integers(0, 16), st.integers(-3, 0), st.sampled_from([2**31, 10**12, 2**63 - 1])
)
scalars = st.one_of(st.none(), st.booleans(), sizes, st.floats(allow_nan=True), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
plain_descriptions = st.fixed_dictionaries(
    {"type": st.sampled_from(["Linear", "Conv1d", "BatchNorm1d", "Embedding", "Evil", 3])},
    optional={
        "in_features": sizes,
        "out_features": sizes,
        "bias": st.one_of(st.booleans(), sizes),
    },
)
descriptions = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["Linear", "Conv1d", "BatchNorm1d", "Embedding", "Evil", 3]
            + ["QuantizedLayer", "CodebookLayer", "Identity", "Flatten", "AdaptiveAvgPool1d"]
        )
    },
    optional={
        "module": st.one_of(plain_descriptions, json_values),
        "weight": st.one_of(
            st.fixed_dictionaries(
                {
                    "bits": sizes,
                    "symmetric": st.booleans(),
                    "per_channel": st.booleans(),
                    "channels": sizes,
                    "observer": st.sampled_from(["minmax", "evil"]),
                    "percentile": st.floats(allow_nan=True),
                    "reduce_range": st.booleans(),
                }
            ),
            json_values,
        ),
        "input": json_values,
        "bits": sizes,
        "centroids": sizes,
        "output_size": st.one_of(sizes, st.lists(sizes, max_size=2)),
        "in_features": sizes,
        "out_features": sizes,
        "bias": st.one_of(st.booleans(), sizes),
        "num_features": sizes,
        "in_channels": sizes,
        "out_channels": sizes,
        "kernel_size": st.lists(sizes, max_size=2),
        "num_embeddings": sizes,
        "embedding_dim": sizes,
    },
)
layer_names = st.sampled_from(["layers.0", "layers.2", "layers", "nope.x", ""])
arch = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["mlp", "mnist1d_cnn", "nope"]), sizes)},
    optional={
        "kwargs": st.dictionaries(
            st.sampled_from(["in_features", "hidden", "num_classes", "channels", "x"]),
            st.one_of(sizes, st.lists(sizes, max_size=3), st.text(max_size=3)),
            max_size=3,
        ),
        "extra": json_values,
    },
)
sparse = st.fixed_dictionaries(
    {
        "format": st.sampled_from(["torchslim.sparse/1", "x"]),
        "tensors": st.dictionaries(
            st.sampled_from(["layers.0.weight", "layers.2.weight", "missing"]),
            st.fixed_dictionaries(
                {
                    "encoding": st.sampled_from(["bitmask", "relidx", "dense", 5]),
                    "shape": st.lists(sizes, max_size=3),
                    "dtype": st.just("float32"),
                }
            ),
            max_size=2,
        ),
    }
)
hf = st.fixed_dictionaries(
    {
        "format": st.sampled_from(["torchslim.hf/1", "x"]),
        "kind": st.sampled_from(["encoder", "classifier", "x"]),
        "config": st.fixed_dictionaries(
            {"model_type": st.sampled_from(["bert", "evil"])},
            optional={
                "hidden_size": sizes,
                "num_attention_heads": sizes,
                "vocab_size": sizes,
                "intermediate_size": sizes,
                "auto_map": json_values,
                "attn_implementation": st.sampled_from(["eager", "kernels-community/x"]),
            },
        ),
    },
    optional={"modules": st.dictionaries(layer_names, descriptions, max_size=2)},
)
VALID = {
    "format": "torchslim.checkpoint/1",
    "task": "digits-mlp",
    "arch": {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [8], "num_classes": 2}},
}
valid_specs = st.builds(
    lambda extra: {**VALID, **extra},
    st.fixed_dictionaries(
        {},
        optional={
            "task_name": st.text(max_size=5),
            "role": st.text(max_size=5),
            "train_seconds": st.floats(0, 9),
            "train_steps": st.integers(0, 9),
            "structure": st.just({}),
        },
    ),
)  # files that load (provenance fields of the right types)
specs = st.one_of(
    valid_specs,
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "format": st.one_of(
                st.sampled_from(["torchslim.checkpoint/1", "torchslim.packed/2"]), json_values
            ),
            "task": st.one_of(st.sampled_from(["digits-mlp", "/tmp/evil.py:make"]), json_values),
            "arch": st.one_of(arch, json_values),
            "structure": st.one_of(st.dictionaries(layer_names, descriptions, max_size=2), sizes),
            "factorized": st.dictionaries(
                layer_names,
                st.fixed_dictionaries(
                    {"kind": st.just("svd"), "layers": st.lists(descriptions, max_size=2)}
                ),
                max_size=1,
            ),
            "sparse": st.one_of(sparse, json_values),
            "resized": st.one_of(
                st.dictionaries(
                    st.sampled_from(["layers.0.weight", "layers.2.bias", "nope.w", "x"]),
                    st.one_of(st.lists(sizes, max_size=3), json_values),
                    max_size=2,
                ),
                json_values,
            ),
            "attributes": st.one_of(
                st.dictionaries(
                    layer_names,
                    st.dictionaries(
                        st.sampled_from(["num_heads", "head_dim", "forward"]), sizes, max_size=2
                    ),
                    max_size=2,
                ),
                json_values,
            ),
            "early_exit": st.one_of(
                st.fixed_dictionaries(
                    {
                        "exits": st.lists(
                            st.sampled_from(["layers.0", "layers.1", "x"]), max_size=2
                        ),
                        "threshold": st.floats(allow_nan=True),
                        "heads": st.lists(st.lists(descriptions, max_size=2), max_size=2),
                    }
                ),
                json_values,
            ),
            "hf": hf,
            "train_steps": sizes,
            "unknown": json_values,
        },
    ),
)


def _state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("mlp", in_features=4, hidden=[8], num_classes=2)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _mlp() -> torch.nn.Module:
    return build_model("mlp", in_features=4, hidden=[8], num_classes=2)


def _tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.fixture
def small_limits(monkeypatch):
    """A 1 MiB floor: every file here may decode to at most ~1 MiB of tensors."""
    monkeypatch.setattr(spec_module, "ALLOCATION_FLOOR", 1 << 20)
    monkeypatch.setattr(spec_module, "ALLOCATION_RATIO", 4)


def _user_task_modules() -> int:
    return sum(name.startswith("torchslim_user_task") for name in sys.modules)


@FUZZ
@given(spec=specs)
def test_fuzzed_specs_load_or_raise_a_typed_error(tmp_path, small_limits, spec):
    path = tmp_path / "fuzz.safetensors"
    save_file(_state(), str(path), {"torchslim": json.dumps(spec)})
    imported = _user_task_modules()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        model, loaded = ts.load_checkpoint(path)
    except TorchslimError:
        pass
    else:
        assert _tensor_bytes(model) <= allocation_limit(path.stat().st_size)
        assert loaded == spec
        assert all(torch.equal(model.state_dict()[k], v) for k, v in _state().items())
    try:  # the user's own original: the record is applied to it
        model = ts.load(path, model=_mlp)
    except TorchslimError:
        pass
    else:
        assert _tensor_bytes(model) <= allocation_limit(path.stat().st_size)
    try:
        resolve_task(ts.read_checkpoint(path)[1], None, "fuzz")
    except TorchslimError:
        pass
    if isinstance(spec, dict) and "hf" in spec:
        from torchslim.hf.loading import load_artifact

        try:
            model, _ = load_artifact(path)
        except TorchslimError:
            pass
        else:
            assert _tensor_bytes(model) <= allocation_limit(path.stat().st_size)
    assert _user_task_modules() == imported  # no task file was imported
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 256 * 1024  # no example raised the process's peak memory by 256 MiB


dtypes = st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "X9"])
header_tensors = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.fixed_dictionaries(
        {
            "dtype": dtypes,
            "shape": st.lists(sizes, max_size=3),
            "data_offsets": st.lists(sizes, min_size=2, max_size=2),
        }
    ),
    max_size=3,
)


@FUZZ
@given(
    tensors=header_tensors,
    metadata=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["torchslim", "x"]), st.text(max_size=40))
    ),
    data=st.binary(max_size=64),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_fuzzed_safetensors_headers(tmp_path, small_limits, tensors, metadata, data, raw):
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    body = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    for action in (ts.read_checkpoint, ts.load_checkpoint, ts.checkpoint.read_spec):
        try:
            action(path)
        except TorchslimError:
            pass
