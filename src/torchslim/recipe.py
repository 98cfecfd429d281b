"""Recipes: an ordered list of technique configs as data, YAML in and out.

A recipe file::

    name: prune-then-quantize
    task: mnist1d-cnn            # optional: the CLI's TASK argument wins
    steps:
      - magnitude_pruning:
          sparsity: 0.8
      - finetune:
          epochs: 3
      - export:
          format: packed

Each step is a one-key mapping from a registered technique name to its fields
(omitted fields take their defaults; a bare ``- finetune`` takes all defaults).
``export`` is optional and must be the last step. The whole file is validated
before anything runs: an unknown step, unknown field, wrong type, out-of-range
value or malformed YAML is a :class:`ConfigError` naming the file, the line and
the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchslim.artifacts import format_names
from torchslim.errors import ConfigError
from torchslim.techniques.base import (
    CONFIG_VERSION,
    CONFIGS,
    TechniqueConfig,
    config_from_dict,
    config_to_dict,
)

_TOP_LEVEL = ("name", "task", "steps")


@dataclass(frozen=True)
class Export:
    """The recipe's final artifact format: one of the registered formats a recipe may name
    (:func:`torchslim.artifacts.format_names`: ``torch`` safetensors, ``sparse``,
    ``packed``, ``onnx``, ``onnx-int8``)."""

    format: str = "torch"

    def __post_init__(self) -> None:
        allowed = format_names(recipe=True)
        if self.format not in allowed:
            raise ConfigError(
                f"export format {self.format!r} is unknown; use one of {', '.join(allowed)}"
            )


@dataclass
class Recipe:
    """An ordered list of technique configs and an optional export format."""

    steps: list[TechniqueConfig] = field(default_factory=list)
    name: str = "recipe"
    task: str | None = None
    export: Export | None = None

    # ---------------------------------------------------------------- dicts

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form: every field of every step written out."""
        data: dict[str, Any] = {"name": self.name}
        if self.task is not None:
            data["task"] = self.task
        steps: list[dict[str, Any]] = []
        for config in self.steps:
            fields = config_to_dict(config)
            kind = fields.pop("type")
            fields.pop("version")
            steps.append({kind: fields})
        if self.export is not None:
            steps.append({"export": {"format": self.export.format}})
        data["steps"] = steps
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        """Build from plain data (errors name the step, without line numbers)."""
        return _parse(data, _Lines(source, None))

    # ---------------------------------------------------------------- YAML

    def to_yaml(self) -> str:
        """The canonical YAML text; ``Recipe.from_yaml(r.to_yaml()).to_yaml()`` is unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str], text: str | None = None) -> Recipe:
        """Read and validate a recipe file (or ``text``, reported as ``source``)."""
        name = str(source)
        if text is None:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"recipe {path} does not exist; pass the path of a YAML recipe")
            text = _read_recipe_text(path)
        try:
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{name}{line}: malformed YAML ({problem}); fix the syntax") from exc
        return _parse(data, _Lines(name, node))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the canonical YAML atomically."""
        from torchslim.fileio import write_text_atomic

        write_text_atomic(path, self.to_yaml())


def _read_recipe_text(path: Path) -> str:
    """The recipe file as text; a binary or unreadable file is one ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"recipe {path} cannot be read ({exc.strerror or exc}); pass a readable YAML recipe"
        ) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"recipe {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); pass a YAML recipe, not a binary file"
        ) from exc


class _Lines:
    """Line numbers of YAML nodes, to put ``file:line`` in front of every error."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.root = root

    def where(self, node: yaml.Node | None) -> str:
        if node is None:
            return self.source
        return f"{self.source}:{node.start_mark.line + 1}"

    @staticmethod
    def child(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
        """The node of a mapping key's value or a sequence item (None when unknown)."""
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            for key_node, value_node in node.value:
                if key_node.value == key:
                    return value_node
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            return node.value[key]
        return None

    @staticmethod
    def key(node: yaml.Node | None, key: str) -> yaml.Node | None:
        """The node of a mapping's key (its line is where the field is written)."""
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if key_node.value == key:
                    return key_node
        return None


def _parse(data: Any, lines: _Lines) -> Recipe:
    root = lines.root
    if not isinstance(data, dict):
        raise ConfigError(
            f"{lines.where(root)}: a recipe is a mapping with 'steps' (and optional 'name', 'task')"
        )
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(
                f"{lines.where(lines.key(root, str(key)))}: unknown recipe field {key!r}; "
                f"use {', '.join(_TOP_LEVEL)}"
            )
    name = data.get("name", "recipe")
    task = data.get("task")
    for label, value in (("name", name), ("task", task)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"{lines.where(lines.child(root, label))}: recipe field {label!r} must be a string"
            )
    steps_node = lines.child(root, "steps")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(
            f"{lines.where(steps_node or root)}: 'steps' must be a non-empty list of "
            "techniques, e.g. '- magnitude_pruning: {sparsity: 0.5}'"
        )
    steps: list[TechniqueConfig] = []
    export: Export | None = None
    allowed = ", ".join(sorted(CONFIGS)) + ", export"
    for index, raw in enumerate(raw_steps):
        step_node = lines.child(steps_node, index)
        where = lines.where(step_node)
        fields: Any
        if isinstance(raw, str):
            kind, fields = raw, {}
            fields_node = None
        elif isinstance(raw, dict) and len(raw) == 1:
            kind, fields = next(iter(raw.items()))
            fields = {} if fields is None else fields
            fields_node = lines.child(step_node, str(kind))
        else:
            raise ConfigError(
                f"{where}: step {index + 1} must be a technique name or a one-key mapping "
                "'technique: {field: value}'"
            )
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: step {index + 1} ({kind}) fields must be a mapping")
        if export is not None:
            raise ConfigError(f"{where}: 'export' must be the last step")
        if kind == "export":
            export = _build_export(fields, lines, fields_node, where)
            continue
        if kind not in CONFIGS:
            raise ConfigError(f"{where}: unknown step {kind!r}; use one of {allowed}")
        steps.append(_build_config(str(kind), fields, lines, fields_node, where, index))
    return Recipe(steps=steps, name=name, task=task, export=export)


def _build_export(
    fields: dict[str, Any], lines: _Lines, node: yaml.Node | None, where: str
) -> Export:
    unknown = [k for k in fields if k != "format"]
    if unknown:
        raise ConfigError(
            f"{lines.where(lines.key(node, unknown[0])) if node else where}: step 'export' has no "
            f"field {unknown[0]!r}; fields: format"
        )
    try:
        return Export(**fields)
    except ConfigError as exc:
        raise ConfigError(
            f"{lines.where(lines.key(node, 'format')) if node else where}: {exc}"
        ) from None


def _build_config(
    kind: str, fields: dict[str, Any], lines: _Lines, node: yaml.Node | None, where: str, index: int
) -> TechniqueConfig:
    names = [f.name for f in dataclasses.fields(CONFIGS[kind])]
    for key in fields:
        if key not in names:
            raise ConfigError(
                f"{lines.where(lines.key(node, str(key))) if node else where}: step {index + 1} "
                f"({kind}) has no field {key!r}; fields: {', '.join(names)}"
            )
    try:
        return config_from_dict({"type": kind, "version": CONFIG_VERSION, **fields})
    except ConfigError as exc:
        message = str(exc)
        culprit = next(
            (
                k
                for k in fields
                if re.search(rf"(?<![\w.]){re.escape(str(k))}\b|\.{re.escape(str(k))}\b", message)
            ),
            None,
        )
        location = lines.where(lines.key(node, culprit)) if (node and culprit) else where
        field_text = f" field {culprit!r}" if culprit else ""
        raise ConfigError(f"{location}: step {index + 1} ({kind}){field_text}: {message}") from None
