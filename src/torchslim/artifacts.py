"""Artifact formats: one list every part of torchslim reads.

An artifact is the file a compressed model becomes. Each format registers itself from its
own module with :func:`register_format` (``checkpoint.py``: ``torch``; ``export/sparse.py``:
``sparse``; ``export/packed.py``: ``packed``; ``export/onnx.py``: ``onnx``, ``onnx-int8``;
``hf/loading.py``: ``hf``) and says:

* its ``name`` (what a recipe's ``export:`` step and ``torchslim export --format`` take) and
  file ``suffix``;
* which models it ``claims`` when no format was asked for (highest ``priority`` first), and
  which formats it ``replaces`` for the models it claims (a transformer artifact stands in
  for ``torch`` / ``sparse``) or ``refuses`` (a quantized model is never a ``torch`` file);
* ``io(task, template, spec)``: the :class:`ArtifactIO` that saves and loads it (one argument
  order for every format);
* ``export(model, task, path, options)``: ``torchslim export``'s writer, returning the
  reloaded model (default: through ``io``);
* ``deploy``: a deployment format (ONNX Runtime), measured against fp32 on its runtime;
* ``decodes`` / ``decode``: the spec key whose presence makes ``read_checkpoint`` decode
  the stored tensors (sparse), and ``reads`` / ``load_into``: files it loads into a
  template's structure (packed);
* ``records``: the spec keys it writes to rebuild the model's structure.

What a file records about how a model differs from its original (``structure``,
``factorized``, ``early_exit``...) is computed by :mod:`torchslim.reload`, which registers
those functions here (:func:`register_structure_records`), so ``checkpoint.py`` writes and
rebuilds them without importing any technique. ``import torchslim`` imports every module that
registers (``torchslim/__init__.py``), whichever submodule is imported first.

This module imports nothing of torchslim but ``errors``: every floor may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torchslim.task import Task


@dataclass
class ArtifactIO:
    """How a model becomes a file and back: ``save(model, path)`` and ``load(path) -> model``."""

    save: Callable[[nn.Module, Path], Any]
    load: Callable[[Path], nn.Module]
    suffix: str = ".safetensors"


IOFactory = Callable[["Task | None", "nn.Module | None", "dict[str, Any] | None"], ArtifactIO]
"""``io(task, template, spec)``: the task supplies the spec (architecture, task name) when
``spec`` is None; ``template`` is a model of the right structure to load into."""


@dataclass(frozen=True)
class ExportOptions:
    """What ``torchslim export`` passes a format's writer.

    Attributes:
        bits: weight bits of a format that quantizes on export (``packed``).
        mode: ``static`` / ``dynamic`` ONNX Runtime int8; None: what the model's quantized
            layers simulate (dynamic input quantizers: dynamic; otherwise static).
    """

    bits: int = 8
    mode: str | None = None


Exporter = Callable[[nn.Module, "Task", Path, ExportOptions], nn.Module]


@dataclass(frozen=True)
class ArtifactFormat:
    """One artifact format (see the module docstring for each field's role)."""

    name: str
    suffix: str
    io: IOFactory | None = None
    claims: Callable[[nn.Module], bool] | None = None
    priority: int = 0
    replaces: tuple[str, ...] = ()
    refuses: tuple[str, ...] = ()
    export: Exporter | None = None
    deploy: bool = False
    decodes: str | None = None
    decode: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    reads: Callable[[dict[str, Any]], bool] | None = None
    load_into: Callable[[Path, nn.Module], nn.Module] | None = None
    records: tuple[str, ...] = ()
    export_suffix: str | None = None
    """The suffix of ``torchslim export``'s default output when it differs from ``suffix``
    (a ``torch`` export is ``*.export.safetensors``, never the input's own name)."""
    recipe: bool = True
    """Whether a recipe's ``export:`` step may name it (``hf`` is chosen, never asked for)."""

    def make_io(
        self,
        task: Task | None = None,
        template: nn.Module | None = None,
        spec: dict[str, Any] | None = None,
    ) -> ArtifactIO:
        """The format's :class:`ArtifactIO` (``ConfigError`` for export-only formats)."""
        if self.io is None:
            raise ConfigError(f"artifact format {self.name!r} is written by export only")
        return self.io(task, template, spec)

    def write(self, model: nn.Module, task: Task, path: Path, options: ExportOptions) -> nn.Module:
        """Write ``model`` to ``path`` for ``torchslim export``; return the reloaded model."""
        if self.export is not None:
            return self.export(model, task, path, options)
        io = self.make_io(task, model)
        io.save(model, path)
        return io.load(path)


_FORMATS: dict[str, ArtifactFormat] = {}


def register_format(fmt: ArtifactFormat) -> ArtifactFormat:
    """Add (or replace, when re-imported) an artifact format; returns it."""
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> list[ArtifactFormat]:
    """Every registered format, highest claiming priority first."""
    return sorted(_FORMATS.values(), key=lambda f: -f.priority)


def format_names(*, recipe: bool = False, export: bool = False) -> tuple[str, ...]:
    """Names of the registered formats: all, those a recipe may ask for, or those
    ``torchslim export`` writes (formats with a writer of their own)."""
    names = [
        f.name
        for f in _FORMATS.values()
        if (not recipe or f.recipe) and (not export or f.export is not None)
    ]
    return tuple(sorted(names))


def get_format(name: str, *, allowed: tuple[str, ...] | None = None) -> ArtifactFormat:
    """The format called ``name``.

    Raises:
        ConfigError: no such format (or not among ``allowed``), naming the known ones.
    """
    known = allowed if allowed is not None else format_names()
    if name not in known or name not in _FORMATS:
        raise ConfigError(f"artifact format {name!r} is unknown; use one of {', '.join(known)}")
    return _FORMATS[name]


def choose_format(model: nn.Module, requested: str | None = None) -> str:
    """The format of ``model``'s measured artifact: the requested one unless it is a
    deployment format, else the highest-priority format that claims the model (deployment
    formats and formats that only stand in for others are never chosen by themselves)."""
    if requested and not get_format(requested).deploy:
        return requested
    for fmt in formats():
        if fmt.deploy or fmt.replaces or fmt.claims is None:
            continue
        if fmt.claims(model):
            return fmt.name
    raise ConfigError("no artifact format claims this model; import torchslim first")


def resolve_format(model: nn.Module, name: str) -> ArtifactFormat:
    """The format that writes ``model`` as ``name``: a format that claims the model and
    replaces ``name`` (e.g. ``hf`` for ``torch``) stands in for it."""
    for fmt in formats():
        if fmt.claims is None or not (name in fmt.replaces or name in fmt.refuses):
            continue
        if fmt.claims(model):
            if name in fmt.refuses:
                deploy = [f.name for f in formats() if f.deploy]
                raise ConfigError(
                    f"this model is saved as {fmt.name!r} (or exported to "
                    f"{' / '.join(deploy) or 'a deployment format'}), not {name!r}"
                )
            return fmt
    return get_format(name)


def decoders() -> list[ArtifactFormat]:
    """Formats whose files need their tensors decoded on read (a spec key names them)."""
    return [f for f in _FORMATS.values() if f.decodes and f.decode is not None]


def reader_of(spec: dict[str, Any]) -> ArtifactFormat | None:
    """The format that loads files with this spec into a template (None: a plain checkpoint)."""
    for fmt in _FORMATS.values():
        if fmt.reads is not None and fmt.load_into is not None and fmt.reads(spec):
            return fmt
    return None


# ------------------------------------------------------------------ structure records


@dataclass(frozen=True)
class StructureRecords:
    """How a file records a compressed model's structure (registered by ``reload.py``).

    Attributes:
        artifact_spec: ``(task, model, spec) -> spec`` plus how ``model`` differs from the
            task's original.
        arch_record: ``(model, arch) -> record`` against a built-in architecture.
        rebuild: ``(original, spec) -> model``: an empty compressed model.
        load: ``(path, original) -> model``: ``torchslim.load``.
    """

    artifact_spec: Callable[[Any, nn.Module, dict[str, Any]], dict[str, Any]]
    arch_record: Callable[[nn.Module, dict[str, Any]], dict[str, Any]]
    rebuild: Callable[[Any, dict[str, Any]], nn.Module]
    load: Callable[[Any, Any], nn.Module]


_RECORDS: list[StructureRecords] = []


def register_structure_records(records: StructureRecords) -> None:
    """Install the functions that record and rebuild structure (``torchslim.reload``)."""
    _RECORDS[:] = [records]


def structure_records() -> StructureRecords:
    """The registered structure functions.

    Raises:
        CheckpointError: none is registered (``torchslim`` was not imported).
    """
    if not _RECORDS:
        raise CheckpointError(
            "no structure recorder is registered; import torchslim (not only a submodule "
            "outside the package) before saving or loading artifacts"
        )
    return _RECORDS[0]


def artifact_spec(task: Task | None, model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` plus how ``model`` differs from the task's original (keys already set stay)."""
    return structure_records().artifact_spec(task, model, spec)
