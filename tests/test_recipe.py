"""Recipes: YAML round-trips over every technique and line-numbered validation errors."""

from __future__ import annotations

import pytest

import torchslim as ts
from torchslim.recipe import Export, Recipe
from torchslim.techniques import CONFIGS

GOOD = """\
name: prune-tune
task: mnist1d-cnn
steps:
  - magnitude_pruning:
      sparsity: 0.8
      mode: global
  - finetune
  - finetune:
      epochs: 2
      lr: 0.001
  - export:
      format: sparse
"""


def test_good_recipe_parses():
    recipe = Recipe.from_yaml("good.yaml", GOOD)
    assert recipe.name == "prune-tune" and recipe.task == "mnist1d-cnn"
    assert [c.name for c in recipe.steps] == ["magnitude_pruning", "finetune", "finetune"]
    assert recipe.steps[0].sparsity == 0.8 and recipe.steps[2].lr == 0.001
    assert recipe.export == Export("sparse")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_technique_round_trips_through_yaml(name):
    recipe = Recipe(steps=[CONFIGS[name]()], name=f"only-{name}")
    text = recipe.to_yaml()
    again = Recipe.from_yaml("r.yaml", text)
    assert again.steps == recipe.steps
    assert again.to_yaml() == text


def test_recipe_file_round_trip(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    recipe = Recipe.from_yaml(path)
    out = tmp_path / "canonical.yaml"
    recipe.save(out)
    assert Recipe.from_yaml(out).to_yaml() == out.read_text()
    assert path.read_text() == GOOD  # the input is never rewritten


BAD = [
    (
        "steps:\n  - magnitude_pruning:\n      sparsity: 0.5\n  - shrink_ray:\n      power: 9\n",
        r"bad.yaml:4: unknown step 'shrink_ray'; use one of .*magnitude_pruning",
    ),
    (
        "steps:\n  - magnitude_pruning:\n      sparsity: 0.5\n      sparsty: 0.2\n",
        r"bad.yaml:4: step 1 \(magnitude_pruning\) has no field 'sparsty'; fields: sparsity",
    ),
    (
        "steps:\n  - finetune:\n      epochs: three\n",
        r"bad.yaml:3: step 1 \(finetune\) field 'epochs': finetune.epochs must be int, got 'three'",
    ),
    (
        "name: x\nsteps:\n  - finetune\n  - magnitude_pruning:\n      mode: global\n      sparsity: 1.5\n",
        r"bad.yaml:6: step 2 \(magnitude_pruning\) field 'sparsity': .*sparsity",
    ),
    ("steps:\n  - finetune: {epochs: 2\n", r"bad.yaml:\d+: malformed YAML"),
    ("steps: []\n", r"bad.yaml:1: 'steps' must be a non-empty list"),
    ("stepz:\n  - finetune\n", r"bad.yaml:1: unknown recipe field 'stepz'"),
    (
        "steps:\n  - export:\n      format: zip\n  - finetune\n",
        r"bad.yaml:3: export format 'zip' is unknown",
    ),
    (
        "steps:\n  - export: {format: torch}\n  - finetune\n",
        r"bad.yaml:3: 'export' must be the last step",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_recipes_name_file_line_and_field(text, message):
    with pytest.raises(ts.ConfigError, match=message):
        Recipe.from_yaml("bad.yaml", text)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ts.ConfigError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "none.yaml")


def test_binary_recipe_is_one_line_error_at_the_cli(tmp_path, capsys):
    from torchslim.cli import main

    path = tmp_path / "binary.yaml"
    payload = b"steps:\n  - finetune\n" + bytes(range(128, 256))  # not UTF-8 from byte 20
    path.write_bytes(payload)
    out = tmp_path / "out"
    assert main(["compress", "mnist1d-cnn", "--recipe", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("torchslim: error: recipe ")
    assert "not UTF-8 text (byte 0x80 at offset 20)" in err[0]
    assert path.read_bytes() == payload  # the input is untouched, nothing was written
    assert not out.exists()
    with pytest.raises(ts.ConfigError, match="not UTF-8"):
        Recipe.from_yaml(path)
