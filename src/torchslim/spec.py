"""Checkpoint specs read from files: checked before anything acts on them.

A ``.safetensors`` file may come from a stranger, so its JSON spec is untrusted input.
:func:`validate_spec` checks it with a small typed reader before torchslim builds a model,
decodes a tensor or looks up a task:

* the spec is a JSON object nested at most :data:`MAX_DEPTH` levels, with the keys of its
  format version only (:data:`CHECKPOINT_KEYS`, plus :data:`PACKED_KEYS` for packed
  artifacts), each of its expected type;
* every integer it names (reference-architecture kwargs, ``structure``, ``factorized``, the
  Hugging Face config and module sizes) is at most the file's size in bytes (a width needs
  at least that many one-byte elements; sparse files: :func:`allocation_limit`), and sparse
  tensors decode to at most :func:`allocation_limit` bytes in all;
* a task named by the file is only a hint: :func:`torchslim.tasks.resolve_task` never follows it to a
  ``.py`` file or a path unless the user passes it (``--task``) or trusts it (``--trust-task``).

Any violation is a :class:`~torchslim.errors.CheckpointError` naming the key and what was
expected. Models are then first built on the meta device (no memory) and compared with the
file's tensor shapes, so a spec cannot ask for tensors larger than the file holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from torchslim.errors import CheckpointError

MAX_DEPTH = 16
"""Deepest JSON nesting a spec may have (torchslim's own specs are far shallower)."""

MAX_STRING = 1 << 16
"""Longest string value (64 KiB)."""

ALLOCATION_FLOOR = 1 << 28
"""Bytes any file may make torchslim allocate for tensors, however small it is (256 MiB)."""

ALLOCATION_RATIO = 1024
"""Times its own size a file may decode to (sparse files are up to ~800x smaller)."""

CHECKPOINT_FORMAT = "torchslim.checkpoint/1"
PACKED_FORMATS = ("torchslim.packed/1", "torchslim.packed/2")

_NUMBER = (int, float)
CHECKPOINT_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "task": (str,),
    "task_name": (str,),
    "metric_name": (str,),
    "arch": (dict,),
    "role": (str,),
    "train_seconds": _NUMBER,
    "train_steps": (int,),
    "structure": (dict,),
    "factorized": (dict,),
    "sparse": (dict,),
    "hf": (dict,),
    "hardware": (dict,),
    "resized": (dict,),
    "attributes": (dict,),
    "early_exit": (dict,),
    "gated": (dict,),
    "original_shapes": (dict,),
}
"""Keys of a ``torchslim.checkpoint/1`` spec and their JSON types."""

HARDWARE_KEYS: dict[str, tuple[type, ...]] = {
    "cpu": (str,),
    "arch": (str,),
    "int8_flags": (list,),
    "u8s8_exact": (bool, type(None)),
    "torch": (str,),
    "onnxruntime": (str, type(None)),
    "python": (str,),
    "threads": (int,),
}
"""Keys of the machine record a spec may carry (:func:`torchslim.hardware.spec_record`)."""

PACKED_KEYS: dict[str, tuple[type, ...]] = {
    "packed": (list,),
    "zeros": (list,),
    "halves": (list,),
    "n32": (int,),
    "n16": (int,),
    "zlib": (bool,),
}
"""Extra keys of a packed artifact's spec."""

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    dict: "an object",
    list: "a list",
    type(None): "null",
}
SUPPORTED_MODEL_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "electra",
    "mpnet",
    "albert",
)
"""Hugging Face ``model_type`` values torchslim loads (``torchslim.hf.loading``) and a
transformer artifact may name."""
_HF_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "kind": (str,),
    "config": (dict,),
    "pooler": (bool,),
    "source_dir": (str, type(None)),
    "modules": (dict,),
    "factorized": (dict,),
    "hooks": (dict,),
    "pooling": (str,),
    "normalize": (bool,),
}
_HF_ATTENTION = (None, "eager", "sdpa")


def allocation_limit(file_bytes: int) -> int:
    """Bytes of tensors a file of ``file_bytes`` may make torchslim allocate."""
    return max(ALLOCATION_FLOOR, ALLOCATION_RATIO * int(file_bytes))


FILE_FIX = "the file is malformed or hostile: re-create it with torchslim"


def _fail(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{where} {problem}; {FILE_FIX}")


def _expect(value: Any, types: tuple[type, ...], key: str, where: str) -> Any:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise _fail(where, f"has {key!r} = {type(value).__name__}, expected {expected}")
    return value


def parse_spec_text(text: Any, where: str) -> Any:
    """``json.loads`` of a spec that turns every failure (deep nesting too) into CheckpointError."""
    if not isinstance(text, str):
        raise _fail(where, "has a spec that is not text")
    if len(text) > 1 << 24:
        raise _fail(where, f"has a {len(text)}-character spec (over 16 MiB)")
    if _nesting(text) > MAX_DEPTH:  # rejected before the recursive parser sees it
        raise _fail(where, f"has a spec nested over {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(
            f"{where} has a corrupt spec ({getattr(exc, 'msg', type(exc).__name__)}); "
            "re-create the checkpoint"
        ) from exc


def _nesting(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _walk(value: Any, key: str, where: str, max_int: int, depth: int = 0) -> None:
    """Every value JSON-typed, nested at most MAX_DEPTH, strings short, integers bounded."""
    if depth > MAX_DEPTH:
        raise _fail(where, f"nests {key!r} over {MAX_DEPTH} levels deep")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > max_int:
            raise _fail(
                where, f"has {key!r} = {value}, more than the {max_int} elements the file can hold"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, f"has {key!r} = {value}, expected a finite number")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _fail(where, f"has a {len(value)}-character string at {key!r}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{key}[{index}]", where, max_int, depth + 1)
        return
    if isinstance(value, dict):
        for name, item in value.items():
            _expect(name, (str,), f"{key} key", where)
            _walk(item, f"{key}.{name}", where, max_int, depth + 1)
        return
    raise _fail(where, f"has {key!r} of type {type(value).__name__}, expected a JSON value")


def _described_modules(table: Any, key: str, where: str, entry_key: str | None = None) -> None:
    """``{module name: {"type": str, ...}}`` (``entry_key``: descriptions are nested lists)."""
    _expect(table, (dict,), key, where)
    for name, entry in table.items():
        _expect(entry, (dict,), f"{key}.{name}", where)
        descriptions = [entry]
        if entry_key is not None:
            _expect(entry.get("kind"), (str,), f"{key}.{name}.kind", where)
            descriptions = _expect(
                entry.get(entry_key), (list,), f"{key}.{name}.{entry_key}", where
            )
        for index, description in enumerate(descriptions):
            label = f"{key}.{name}" + (f".{entry_key}[{index}]" if entry_key else "")
            _expect(description, (dict,), label, where)
            _expect(description.get("type"), (str,), f"{label}.type", where)


def _validate_hardware(record: dict[str, Any], where: str) -> None:
    """The machine record: known keys, scalar values, short strings (it is only shown)."""
    for key, value in record.items():
        if key not in HARDWARE_KEYS:
            raise _fail(
                where,
                f"has unknown key 'hardware.{str(key)[:40]}' (allowed: {', '.join(HARDWARE_KEYS)})",
            )
        _expect(value, HARDWARE_KEYS[key], f"hardware.{key}", where)
        items = value if isinstance(value, list) else [value]
        if len(items) > 32:
            raise _fail(where, f"has {len(items)} entries in 'hardware.{key}'")
        for item in items:
            if isinstance(value, list):
                _expect(item, (str,), f"hardware.{key}", where)
            if isinstance(item, str) and len(item) > 200:
                raise _fail(where, f"has a {len(item)}-character 'hardware.{key}'")


def _validate_sparse(sparse: Any, where: str, limit: int) -> None:
    _expect(sparse, (dict,), "sparse", where)
    _expect(sparse.get("format"), (str,), "sparse.format", where)
    tensors = _expect(sparse.get("tensors", {}), (dict,), "sparse.tensors", where)
    total = 0
    for name, info in tensors.items():
        key = f"sparse.tensors.{name}"
        _expect(info, (dict,), key, where)
        _expect(info.get("encoding"), (str,), f"{key}.encoding", where)
        shape = _expect(info.get("shape"), (list,), f"{key}.shape", where)
        numel = 1
        for size in shape:
            _expect(size, (int,), f"{key}.shape", where)
            if size < 0:
                raise _fail(where, f"has {key}.shape {shape} with a negative size")
            numel *= size
            if numel * 8 > limit:  # float64 at most
                break
        total += numel * 8
        if total > limit:
            raise _fail(
                where,
                f"has {key}.shape {shape}: its sparse tensors decode to more than {limit} "
                "bytes, more than the file could hold",
            )


def _validate_hf(entry: Any, where: str, max_int: int) -> None:
    _expect(entry, (dict,), "hf", where)
    for key, value in entry.items():
        if key not in _HF_KEYS:
            raise _fail(where, f"has unknown key 'hf.{key}' (allowed: {', '.join(_HF_KEYS)})")
        _expect(value, _HF_KEYS[key], f"hf.{key}", where)
    for key in ("format", "kind", "config"):
        if key not in entry:
            raise _fail(where, f"lacks 'hf.{key}'")
    if entry["kind"] not in ("encoder", "classifier"):
        raise _fail(where, f"has 'hf.kind' = {entry['kind']!r}, expected encoder or classifier")
    if entry.get("pooling", "mean") not in ("mean", "cls", "max"):
        raise _fail(where, f"has 'hf.pooling' = {entry['pooling']!r}, expected mean, cls or max")
    config = entry["config"]
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise _fail(
            where,
            f"has 'hf.config.model_type' = {str(config.get('model_type'))[:60]!r}, expected one "
            f"of {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    for key in ("auto_map", "trust_remote_code", "custom_pipelines"):
        if key in config:  # would point transformers at code outside torchslim
            raise _fail(where, f"has 'hf.config.{key}', which names code to import")
    for key in ("attn_implementation", "_attn_implementation"):
        if config.get(key) not in _HF_ATTENTION:
            raise _fail(
                where, f"has 'hf.config.{key}' = {config.get(key)!r}, expected eager or sdpa"
            )
    _described_modules(entry.get("modules", {}), "hf.modules", where)
    _described_modules(entry.get("factorized", {}), "hf.factorized", where, "layers")
    _walk(entry, "hf", where, max_int)


def validate_spec(
    spec: Any,
    where: str,
    file_bytes: int,
    tensor_names: list[str] | None = None,
    fix: str | None = None,
) -> dict[str, Any]:
    """Check a spec read from a file; return it unchanged.

    Args:
        spec: the parsed JSON.
        where: what to name in errors (e.g. ``checkpoint model.safetensors``).
        file_bytes: the file's size: bounds every size the spec names.
        tensor_names: the tensors the file holds (checks the layer count of transformers).
        fix: the advice ending each message (default: re-create the file).

    Raises:
        CheckpointError: a wrong type, unknown key, or a size the file cannot hold.
    """
    try:
        return _validate(spec, where, file_bytes, tensor_names)
    except CheckpointError as exc:
        if fix is None:
            raise
        raise CheckpointError(str(exc).replace(FILE_FIX, fix)) from exc


def _validate(
    spec: Any, where: str, file_bytes: int, tensor_names: list[str] | None
) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise _fail(where, f"has a spec of type {type(spec).__name__}, expected a JSON object")
    limit = allocation_limit(file_bytes)
    fmt = _expect(spec.get("format", CHECKPOINT_FORMAT), (str,), "format", where)
    allowed = dict(CHECKPOINT_KEYS)
    if fmt in PACKED_FORMATS:
        allowed.update(PACKED_KEYS)
    elif fmt != CHECKPOINT_FORMAT:
        raise _fail(
            where,
            f"has 'format' = {fmt!r}, expected {CHECKPOINT_FORMAT} or {' / '.join(PACKED_FORMATS)}",
        )
    for key, value in spec.items():
        if key not in allowed:
            raise _fail(where, f"has unknown key {key!r} (allowed: {', '.join(allowed)})")
        _expect(value, allowed[key], key, where)
    for key in ("task", "task_name", "metric_name", "role"):
        if key in spec and len(spec[key]) > MAX_STRING:
            raise _fail(where, f"has a {len(spec[key])}-character {key!r}")
    if "train_seconds" in spec and not math.isfinite(spec["train_seconds"]):
        raise _fail(where, "has a non-finite 'train_seconds'")
    # a width or count needs at least that many elements of one byte in the (decoded) file
    max_int = limit if "sparse" in spec else max(int(file_bytes), 1 << 12)
    if "arch" in spec:
        arch = spec["arch"]
        _expect(arch.get("name"), (str,), "arch.name", where)
        _expect(arch.get("kwargs", {}), (dict,), "arch.kwargs", where)
        extra = set(arch) - {"name", "kwargs"}
        if extra:
            raise _fail(where, f"has unknown key 'arch.{sorted(extra)[0]}' (allowed: name, kwargs)")
        _walk(arch, "arch", where, max_int)
    if "structure" in spec:
        _described_modules(spec["structure"], "structure", where)
        _walk(spec["structure"], "structure", where, max_int)
    if "factorized" in spec:
        _described_modules(spec["factorized"], "factorized", where, "layers")
        _walk(spec["factorized"], "factorized", where, max_int)
    _validate_record(spec, where, max_int)
    if "hardware" in spec:
        _validate_hardware(spec["hardware"], where)
    if "sparse" in spec:
        _validate_sparse(spec["sparse"], where, limit)
    if "hf" in spec:
        _validate_hf(spec["hf"], where, max_int)
        if tensor_names is not None:
            hf_layer_count(tensor_names, where)
    for key in PACKED_KEYS:
        if key in spec:
            _walk(spec[key], key, where, max_int)
    _validate_packed(spec, where)
    return spec


def _validate_record(spec: dict[str, Any], where: str, max_int: int) -> None:
    """``resized`` / ``attributes`` / ``early_exit`` / ``gated`` (see torchslim.reload)."""
    for name, entry in spec.get("gated", {}).items():
        _expect(entry, (dict,), f"gated.{name}", where)
        if set(entry) != {"channels", "branches"}:
            raise _fail(where, f"has 'gated.{name}' without exactly 'channels' and 'branches'")
        if _expect(entry["channels"], (int,), f"gated.{name}.channels", where) <= 0:
            raise _fail(where, f"has 'gated.{name}.channels' = {entry['channels']}, expected > 0")
        branches = _expect(entry["branches"], (list,), f"gated.{name}.branches", where)
        if len(branches) < 2 or branches.count("original") != 1:
            raise _fail(where, f"has 'gated.{name}.branches' without 2+ branches, one 'original'")
        _described_modules(
            {str(i): b for i, b in enumerate(branches) if b != "original"},
            f"gated.{name}.branches",
            where,
        )
    _walk(spec.get("gated", {}), "gated", where, max_int)
    for key in ("resized", "original_shapes"):
        for name, shape in spec.get(key, {}).items():
            _expect(shape, (list,), f"{key}.{name}", where)
            if len(shape) > 8:
                raise _fail(where, f"has '{key}.{name}' with {len(shape)} dimensions")
            for size in shape:
                if _expect(size, (int,), f"{key}.{name}", where) < 0:
                    raise _fail(where, f"has '{key}.{name}' = {shape} with a negative size")
        if key == "resized":  # (original shapes allocate nothing: only compared)
            _walk(spec.get(key, {}), key, where, max_int)
    for name, values in spec.get("attributes", {}).items():
        _expect(values, (dict,), f"attributes.{name}", where)
        for key, value in values.items():
            if key not in ("num_heads", "head_dim"):
                raise _fail(where, f"has unknown key 'attributes.{name}.{key}'")
            if _expect(value, (int,), f"attributes.{name}.{key}", where) <= 0:
                raise _fail(where, f"has 'attributes.{name}.{key}' = {value}, expected > 0")
    _walk(spec.get("attributes", {}), "attributes", where, max_int)
    if "early_exit" in spec:
        entry = spec["early_exit"]
        extra = set(entry) - {"exits", "threshold", "heads"}
        if extra:
            raise _fail(where, f"has unknown key 'early_exit.{sorted(extra)[0]}'")
        for key, types in (("exits", (list,)), ("threshold", _NUMBER), ("heads", (list,))):
            _expect(entry.get(key), types, f"early_exit.{key}", where)
        for index, point in enumerate(entry["exits"]):
            _expect(point, (str,), f"early_exit.exits[{index}]", where)
        for index, head in enumerate(entry["heads"]):
            _described_modules(
                {
                    str(i): d
                    for i, d in enumerate(_expect(head, (list,), "early_exit.heads", where))
                },
                f"early_exit.heads[{index}]",
                where,
            )
        _walk(entry, "early_exit", where, max_int)


def _validate_packed(spec: dict[str, Any], where: str) -> None:
    """``packed``: [[state key, bits, codec, bytes]] (format 1: 2 items); indices >= 0."""
    for index, entry in enumerate(spec.get("packed", [])):
        key = f"packed[{index}]"
        _expect(entry, (list,), key, where)
        if len(entry) not in (2, 4):
            raise _fail(
                where, f"has '{key}' with {len(entry)} items, expected [key, bits, codec, bytes]"
            )
        _expect(entry[0], (str,), f"{key}[0]", where)
        for position, value in enumerate(entry[1:], 1):
            _expect(value, (int,), f"{key}[{position}]", where)
            if value < 0:
                raise _fail(where, f"has '{key}[{position}]' = {value}, expected >= 0")
    for name in ("zeros", "halves"):
        for index, value in enumerate(spec.get(name, [])):
            _expect(value, (int,), f"{name}[{index}]", where)
    for name in ("n32", "n16"):
        if spec.get(name, 0) < 0:
            raise _fail(where, f"has {name!r} = {spec[name]}, expected >= 0")


def hf_layer_count(names: list[str], where: str = "artifact") -> int | None:
    """Encoder blocks named by the tensors (``encoder.layer.N.``): must be 0..N-1, no gaps."""
    import re

    indices = {
        int(m.group(1))
        for key in names
        if (m := re.search(r"(?:^|\.)(?:encoder\.)?(?:layer|layers)\.(\d+)\.", key))
    }
    if not indices:
        return None
    if indices != set(range(len(indices))):
        raise _fail(
            where,
            f"names encoder layers up to {max(indices)} but holds {len(indices)} of them "
            "(expected 0..N-1)",
        )
    return len(indices)


def check_shapes(expected: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
    """``expected`` (a model's state dict, e.g. built on the meta device) vs the file's tensors."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"{source} does not match the architecture ({'; '.join(parts)}); "
            "load it with the task or model it was saved from"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} does not match the architecture: {key} has shape "
                f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model; "
                "load it with the task or model it was saved from"
            )
