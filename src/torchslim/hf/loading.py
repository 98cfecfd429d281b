"""Load Hugging Face encoder folders and save / load (compressed) models as artifacts.

Model folders (everything local, nothing is downloaded):

* sentence-transformers layout: ``modules.json`` listing a ``Transformer`` module, a
  ``Pooling`` module (``1_Pooling/config.json``: mean, cls or max pooling) and optionally
  ``Normalize``; the transformer's ``config.json``, weights (``model.safetensors`` or
  ``pytorch_model.bin``) and tokenizer files (``tokenizer.json`` or ``vocab.txt``);
* a plain ``AutoModel`` folder (``config.json`` + weights + tokenizer): mean pooling,
  no normalization; or, for :func:`load_classifier`, an
  ``AutoModelForSequenceClassification`` folder.

Wrappers (plain ``nn.Module`` s, so every torchslim technique, metric and runtime works):

* :class:`SentenceEncoder` -- ``forward(input_ids, attention_mask, token_type_ids=None)``
  returns pooled (and normalized) embeddings ``[batch, hidden]``;
* :class:`SequenceClassifier` -- same inputs, returns logits ``[batch, labels]``.

Both keep the Hugging Face model as ``.backbone`` (e.g. a ``BertModel`` /
``BertForSequenceClassification``) and the source folder as ``.source_dir`` (the
tokenizer is read from there).

Artifact (interface for structural techniques, e.g. ``torchslim.hf.structure``):
:func:`save_artifact` writes one ``.safetensors`` file with the model's state dict and a
JSON spec under ``spec["hf"]``: the backbone's HF config (``config.to_dict()``), pooling,
normalization, source folder, and a description of every ``nn.Linear``, ``nn.Embedding``,
``nn.LayerNorm`` and torchslim quantized module (type and sizes). :func:`load_artifact`
builds the backbone from the stored config, then

1. sets ``config.num_hidden_layers`` to the number of ``encoder.layer.N`` blocks found in the
   weights (layer dropping only has to renumber the ``ModuleList``);
2. replaces every module whose recorded type or size differs from the freshly built one
   (pruned attention heads: smaller query/key/value/output Linear layers; pruned FFN
   neurons: per-layer intermediate sizes; quantized layers), and updates
   ``num_attention_heads`` / ``all_head_size`` of attention blocks from their query size;
3. rebuilds low-rank :class:`~torchslim.techniques.lowrank.Factorized` layers;
4. runs any hook registered with :func:`register_artifact_hook` (``save(model) -> dict |
   None`` at save time; ``load(model, data)`` before the weights are loaded) for
   structure that module sizes cannot express;
5. loads the weights strictly (every key and shape checked). Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.artifacts import ArtifactFormat, ArtifactIO, register_format
from torchslim.errors import CheckpointError, ConfigError, DataError, UnsupportedError
from torchslim.spec import SUPPORTED_MODEL_TYPES

if TYPE_CHECKING:
    from torchslim.task import Task

ARTIFACT_FORMAT = "torchslim.hf/1"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_SUPPORTED_ST_MODULES = ("Transformer", "Pooling", "Normalize")


def require_transformers() -> Any:
    """Import ``transformers`` or raise a one-line UnsupportedError naming the extra."""
    try:
        import transformers
    except ImportError as exc:
        raise UnsupportedError(
            "transformer tasks need the Hugging Face libraries: install torchslim[hf] "
            "(pip install 'torchslim[hf]')"
        ) from exc
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return transformers


# ------------------------------------------------------------------ model folders


@dataclass(frozen=True)
class ModelFolder:
    """What :func:`read_folder` found in a model folder."""

    path: Path
    config: dict[str, Any]
    model_type: str
    architecture: str
    sentence_transformers: bool
    pooling: str
    normalize: bool


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc}); restore the file") from exc


def read_folder(model_dir: str | Path) -> ModelFolder:
    """Check a model folder and read its config and pooling (nothing is loaded or modified).

    Raises:
        DataError: the folder or one of its files is missing or unreadable (names the file).
        UnsupportedError: an architecture or sentence-transformers module that is not supported.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise DataError(
            f"model folder {path} does not exist or is not a folder; pass --model-dir with a "
            "local Hugging Face / sentence-transformers model folder"
        )
    modules_file = path / "modules.json"
    transformer_dir, pooling, normalize, is_st = path, "mean", False, modules_file.exists()
    if is_st:
        modules = _read_json(modules_file, "sentence-transformers module list")
        if not isinstance(modules, list):
            raise DataError(f"{modules_file} must be a JSON list of modules; restore the file")
        pooling_dir = None
        for entry in modules:
            kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _SUPPORTED_ST_MODULES:
                raise UnsupportedError(
                    f"{modules_file} lists module {entry.get('type')!r}, which is not supported; "
                    f"supported: {', '.join(_SUPPORTED_ST_MODULES)}"
                )
            if kind == "Transformer":
                transformer_dir = path / entry.get("path", "")
            elif kind == "Pooling":
                pooling_dir = path / entry.get("path", "1_Pooling")
            elif kind == "Normalize":
                normalize = True
        if pooling_dir is not None:
            pooling_config = pooling_dir / "config.json"
            if not pooling_config.is_file():
                raise DataError(
                    f"model folder {path} lacks {pooling_config.relative_to(path)} (the pooling "
                    "config modules.json points to); restore the file"
                )
            pooling = _pooling_mode(_read_json(pooling_config, "pooling config"), pooling_config)
    config_file = transformer_dir / "config.json"
    if not config_file.is_file():
        raise DataError(f"model folder {path} lacks config.json; restore the file")
    config = _read_json(config_file, "model config")
    if not any((transformer_dir / name).is_file() for name in WEIGHT_FILES):
        raise DataError(
            f"model folder {path} lacks the weights file (model.safetensors or "
            "pytorch_model.bin); restore it"
        )
    if not any((transformer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"model folder {path} lacks the tokenizer files (tokenizer.json or vocab.txt); "
            "restore them"
        )
    model_type = str(config.get("model_type", ""))
    architecture = (config.get("architectures") or [model_type or "unknown"])[0]
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedError(
            f"model {architecture} (model_type {model_type!r} in {config_file.name}) is not a "
            f"supported encoder; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return ModelFolder(transformer_dir, config, model_type, architecture, is_st, pooling, normalize)


def _pooling_mode(config: dict[str, Any], where: Path) -> str:
    chosen = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
    others = [
        k
        for k, v in config.items()
        if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS
    ]
    if others or len(chosen) != 1:
        raise UnsupportedError(
            f"pooling config {where} asks for {', '.join(others + chosen) or 'no pooling'}; "
            "supported: exactly one of mean, cls or max pooling"
        )
    return chosen[0]


def load_tokenizer(model_dir: str | Path) -> Any:
    """The folder's tokenizer (fast, local files only)."""
    transformers = require_transformers()
    folder = read_folder(model_dir)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder.path), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"the tokenizer files in {folder.path} cannot be read ({first}); restore them"
        ) from exc


# ------------------------------------------------------------------ wrappers


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class _Wrapper(nn.Module):
    def __init__(self, backbone: nn.Module, source_dir: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.source_dir = source_dir
        self.uses_token_types = "token_type_ids" in _forward_arguments(backbone)

    @property
    def config(self) -> Any:
        """The backbone's Hugging Face config."""
        return self.backbone.config

    def _hidden(self, input_ids, attention_mask, token_type_ids) -> Any:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": False}
        if token_type_ids is not None and self.uses_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.backbone(**kwargs)[0]


def _forward_arguments(module: nn.Module) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return ()


class SentenceEncoder(_Wrapper):
    """Token ids -> pooled (optionally L2-normalized) sentence embeddings.

    Args:
        backbone: the Hugging Face encoder (``AutoModel``), e.g. a ``BertModel``.
        pooling: ``mean`` (over non-padding tokens), ``cls`` or ``max``.
        normalize: L2-normalize the embeddings (sentence-transformers ``Normalize``).
        source_dir: the model folder (tokenizer files).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooling: str = "mean",
        normalize: bool = False,
        source_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, source_dir)
        if pooling not in ("mean", "cls", "max"):
            raise ConfigError(f"pooling {pooling!r} is unknown; use mean, cls or max")
        self.pooling = pooling
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self._hidden(input_ids, attention_mask, token_type_ids)
        pooled = _pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, normalize={self.normalize}"


class SequenceClassifier(_Wrapper):
    """Token ids -> class logits (wraps ``AutoModelForSequenceClassification``)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._hidden(input_ids, attention_mask, token_type_ids)


def _from_pretrained(auto_class: Any, folder: ModelFolder) -> nn.Module:
    try:
        return auto_class.from_pretrained(str(folder.path), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"model folder {folder.path} cannot be loaded as {folder.architecture} ({first[:200]}); "
            "check config.json and the weights file"
        ) from exc


def _drop_unused_pooler(backbone: nn.Module, folder: ModelFolder) -> None:
    """Drop BERT's pooler when the weights file has none (sentence-transformers models)."""
    if getattr(backbone, "pooler", None) is None:
        return
    weights = folder.path / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        if not any("pooler" in key for key in handle.keys()):  # noqa: SIM118
            backbone.pooler = None


def load_encoder(model_dir: str | Path) -> SentenceEncoder:
    """A sentence-embedding model from a sentence-transformers or plain AutoModel folder."""
    transformers = require_transformers()
    folder = read_folder(model_dir)
    backbone = _from_pretrained(transformers.AutoModel, folder)
    _drop_unused_pooler(backbone, folder)
    encoder = SentenceEncoder(backbone.eval(), folder.pooling, folder.normalize, str(folder.path))
    return encoder.eval()


def load_classifier(model_dir: str | Path) -> SequenceClassifier:
    """A text classifier from an ``AutoModelForSequenceClassification`` folder."""
    transformers = require_transformers()
    folder = read_folder(model_dir)
    backbone = _from_pretrained(transformers.AutoModelForSequenceClassification, folder)
    return SequenceClassifier(backbone.eval(), str(folder.path)).eval()


# ------------------------------------------------------------------ artifact

ArtifactHook = tuple[Callable[[nn.Module], Any], Callable[[nn.Module, Any], None]]
ARTIFACT_HOOKS: dict[str, ArtifactHook] = {}


def register_artifact_hook(
    name: str, save: Callable[[nn.Module], Any], load: Callable[[nn.Module, Any], None]
) -> None:
    """Record extra structure in artifacts: ``save(model)`` returns JSON data (or None to
    skip); ``load(model, data)`` applies it to the freshly built model before weights load."""
    ARTIFACT_HOOKS[name] = (save, load)


def describe(module: nn.Module) -> dict[str, Any] | None:
    """Type and sizes of a module the artifact can rebuild (None for other modules)."""
    describe_self = getattr(module, "describe", None)
    if callable(describe_self):
        return describe_self()
    if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
        from torchslim.structure import describe_module

        return describe_module(module)
    return None


def build(description: dict[str, Any]) -> nn.Module:
    """An empty module from :func:`describe`'s output."""
    from torchslim.structure import build_module  # registered types (Int8Linear, ...) first

    return build_module(description)


def _wrapper_of(model: nn.Module) -> _Wrapper:
    if not isinstance(model, _Wrapper):
        raise ConfigError(
            f"save_artifact takes a SentenceEncoder or SequenceClassifier, got "
            f"{type(model).__name__}; load the model with torchslim.hf.loading"
        )
    return model


def artifact_spec(model: nn.Module) -> dict[str, Any]:
    """The ``spec["hf"]`` entry describing ``model`` (see the module docstring)."""
    from torchslim.techniques.lowrank import factorized_structure

    wrapper = _wrapper_of(model)
    config = json.loads(wrapper.backbone.config.to_json_string(use_diff=False))
    for key in ("auto_map", "trust_remote_code", "custom_pipelines"):
        config.pop(key, None)  # code pointers: a reader refuses them (torchslim.spec)
    modules = {}
    for name, module in wrapper.backbone.named_modules():
        description = describe(module)
        if description is not None:
            modules[name] = description
    hooks = {}
    for hook_name, (save, _) in ARTIFACT_HOOKS.items():
        data = save(wrapper)
        if data is not None:
            hooks[hook_name] = data
    entry = {
        "format": ARTIFACT_FORMAT,
        "kind": "encoder" if isinstance(wrapper, SentenceEncoder) else "classifier",
        "config": config,
        "pooler": getattr(wrapper.backbone, "pooler", None) is not None,
        "source_dir": wrapper.source_dir,
        "modules": modules,
        "factorized": factorized_structure(wrapper.backbone),
        "hooks": hooks,
    }
    if isinstance(wrapper, SentenceEncoder):
        entry.update(pooling=wrapper.pooling, normalize=wrapper.normalize)
    return entry


def save_artifact(model: nn.Module, path: str | Path, spec: dict[str, Any] | None = None) -> int:
    """Save a (possibly compressed) encoder / classifier as one safetensors file; return bytes.

    ``spec`` adds provenance (e.g. ``task.spec()``); the model is not modified.
    """
    from torchslim.checkpoint import plain_state, save_checkpoint

    payload = dict(spec or {})
    payload["hf"] = artifact_spec(model)
    state = {f"backbone.{k}": v for k, v in plain_state(_wrapper_of(model).backbone).items()}
    return save_checkpoint(model, path, payload, tensors=state)


def artifact_io(
    task: Task | None = None, template: nn.Module | None = None, spec: Any = None
) -> Any:
    """An :class:`~torchslim.artifacts.ArtifactIO` for ``measure`` / ``measure_many``: the
    transformer artifact (:func:`save_artifact`; ``spec`` or the task's as provenance),
    loaded back with :func:`load_artifact` (it rebuilds from the file alone)."""
    chosen = spec if spec is not None else task.spec() if task is not None else None
    return ArtifactIO(
        save=lambda model, path: save_artifact(model, path, chosen),
        load=lambda path: load_artifact(path)[0],
    )


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face encoder / classifier torchslim loaded."""
    return isinstance(model, _Wrapper)


def _layer_count(state: dict[str, torch.Tensor]) -> int | None:
    """Encoder blocks the tensors name (``encoder.layer.0..N-1``; a gap is a CheckpointError)."""
    from torchslim.spec import hf_layer_count

    return hf_layer_count(list(state))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _fix_attention(backbone: nn.Module) -> None:
    for module in backbone.modules():
        query = getattr(module, "query", None)
        head = getattr(module, "attention_head_size", None)
        if isinstance(query, nn.Module) and hasattr(query, "out_features") and head:
            module.all_head_size = query.out_features
            module.num_attention_heads = query.out_features // head


def build_from_artifact_spec(entry: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """An empty wrapper shaped as the artifact describes (weights not loaded).

    The wrapper is first built on the meta device (no memory) and its tensor shapes compared
    with ``state``, so a spec cannot make torchslim allocate more than the file holds.
    """
    from torchslim.spec import check_shapes

    with torch.device("meta"):
        shell = _build_checked(entry, state)
    check_shapes(shell.state_dict(), state, "artifact")
    return _build_checked(entry, state)


def _build_checked(entry: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    try:
        return _build_wrapper(entry, state)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        if isinstance(exc, (CheckpointError, ConfigError)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"artifact: the model its spec describes cannot be built ({type(exc).__name__}: "
            f"{first}); re-create the artifact"
        ) from exc


def _build_wrapper(entry: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    transformers = require_transformers()
    from torchslim.techniques.lowrank import apply_factorized_structure

    if entry.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(
            f"artifact format {entry.get('format')!r} is not {ARTIFACT_FORMAT}; re-create it "
            "with this torchslim version"
        )
    config_dict = dict(entry["config"])
    model_type = config_dict.pop("model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedError(f"artifact model type {model_type!r} is not supported")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    layers = _layer_count({k.removeprefix("backbone."): v for k, v in state.items()})
    if layers is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = layers
    auto = (
        transformers.AutoModel
        if entry["kind"] == "encoder"
        else transformers.AutoModelForSequenceClassification
    )
    with torch.random.fork_rng(devices=[]):
        backbone = auto.from_config(config)
    if not entry.get("pooler", True) and hasattr(backbone, "pooler"):
        backbone.pooler = None
    for name, description in entry.get("modules", {}).items():
        try:
            current = backbone.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(
                f"artifact describes module {name}, which the rebuilt {type(backbone).__name__} "
                "lacks; re-create the artifact"
            ) from exc
        if describe(current) != description:
            _set_module(backbone, name, build(description))
    apply_factorized_structure(backbone, entry.get("factorized", {}))
    _fix_attention(backbone)
    if entry["kind"] == "encoder":
        wrapper: _Wrapper = SentenceEncoder(
            backbone, entry.get("pooling", "mean"), entry.get("normalize", False)
        )
    else:
        wrapper = SequenceClassifier(backbone)
    wrapper.source_dir = entry.get("source_dir")
    for hook_name, data in entry.get("hooks", {}).items():
        if hook_name not in ARTIFACT_HOOKS:
            raise CheckpointError(
                f"artifact needs structure hook {hook_name!r}; import the module that registers "
                "it (e.g. torchslim.hf.structure) before loading"
            )
        ARTIFACT_HOOKS[hook_name][1](wrapper, data)
    return wrapper


def load_artifact(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load an artifact written by :func:`save_artifact`: (model in eval mode, spec)."""
    from torchslim.checkpoint import load_state_into, read_checkpoint

    _try_import_structure()
    state, spec = read_checkpoint(path)
    if "hf" not in spec:
        raise CheckpointError(
            f"{path} is not a transformer artifact (its spec has no 'hf' entry); save it with "
            "torchslim.hf.loading.save_artifact"
        )
    model = build_from_artifact_spec(spec["hf"], state)
    load_state_into(model, state, source=f"artifact {path}")
    return model.eval(), spec


def _try_import_structure() -> None:
    """Import optional hf modules that may register artifact hooks."""
    import importlib

    for name in ("torchslim.hf.structure", "torchslim.hf.layerdrop"):
        try:
            importlib.import_module(name)
        except ImportError:
            logging.getLogger(__name__).debug("optional module %s not importable", name)


register_format(
    ArtifactFormat(
        name="hf",
        suffix=".safetensors",
        io=artifact_io,
        claims=is_hf_model,
        priority=30,
        replaces=("torch", "sparse"),  # packed / ONNX stay what they are
        recipe=False,
        records=("hf",),
    )
)
