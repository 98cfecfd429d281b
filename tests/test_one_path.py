"""One way to run and measure a candidate: compress, the demo and the optimizer agree.

An early-exit model computes less for samples that leave early, so its MACs per sample are
the mean over the data of the path each sample takes. Every path (``torchslim compress``,
the demo, the optimizer's candidates) measures through ``pipeline.run_recipe(s)`` and
``measure.model_macs``, so the same recipe reports the same MACs everywhere, and they equal
the hand count below.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
import torch

import torchslim as ts
from torchslim.recipe import Recipe
from torchslim.techniques import CONFIGS

# The model of the task file: Linear(8, 32) - ReLU - Linear(32, 32) - ReLU - Linear(32, 3),
# one exit head (Linear(32, 3) on the first ReLU's 32 features). By hand, per sample:
EXIT_PATH = 8 * 32 + 32 * 3  # leaves at the head: first Linear + the head = 352 MACs
FULL_PATH = 8 * 32 + 32 * 3 + 32 * 32 + 32 * 3  # the head is computed, then the rest = 1472
BASELINE = 8 * 32 + 32 * 32 + 32 * 3  # 1376

TASK_FILE = textwrap.dedent(
    """
    from torch import nn

    import torchslim as ts
    from helpers import blobs


    def model():
        return nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )


    def make_task():
        held_out = blobs(120, seed=2)  # val = test: the optimizer measures on val
        return ts.Task(
            name="exit-blobs",
            model=model,
            train=blobs(240, seed=0),
            val=held_out,
            test=held_out,
            train_config=ts.TrainConfig(lr=0.05, epochs=4, batch_size=32, seed=0, threads=1),
        )
    """
)

RECIPE = Recipe(
    steps=[CONFIGS["early_exit"](exits=("1",), threshold=0.9999, epochs=1, mode="distill")],
    name="early exit",
)


@pytest.fixture(scope="module")
def exit_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exit-task")
    path = folder / "exit_task.py"
    path.write_text(TASK_FILE)
    reference = f"{path}:make_task"
    task = ts.tasks.get(reference)
    task.baseline(progress=False)  # trained once (cached) for every path below
    return reference, task


def hand_macs(model: torch.nn.Module, task: ts.Task) -> tuple[int, list[int]]:
    """Mean MACs per test sample from the exit counts, with the path costs counted by hand."""
    saved = model.exit_counts
    model.exit_counts = [0, 0]
    task.evaluate(model, "test")
    counts, model.exit_counts = model.exit_counts, saved
    return (counts[0] * EXIT_PATH + counts[1] * FULL_PATH) // sum(counts), counts


def test_early_exit_macs_are_the_same_through_compress_demo_and_optimizer(
    exit_task, tmp_path, monkeypatch
):
    from torchslim.cli import main
    from torchslim.search.budget import Budget, Objective
    from torchslim.search.evaluate import Evaluator

    reference, task = exit_task
    base = task.baseline(progress=False)
    recipe_file = tmp_path / "exit.yaml"
    RECIPE.save(recipe_file)

    # compress (the CLI), seeded because exit heads start from torch's global RNG
    out = tmp_path / "compress"
    torch.manual_seed(0)
    assert main(["compress", reference, "--recipe", str(recipe_file), "--out", str(out),
                 "--no-latency"]) == 0  # fmt: skip
    compressed = json.loads((out / "results.json").read_text())["candidates"][0]

    # the demo, with its recipe list replaced by this recipe (and a trivial second one)
    import torchslim.demo as demo

    monkeypatch.setattr(demo, "demo_recipes", lambda quick: [RECIPE])
    monkeypatch.setattr(
        demo, "_optimized_recipe", lambda task, quick: Recipe(steps=[], name="unchanged")
    )
    torch.manual_seed(0)
    report = demo.run_demo(tmp_path / "demo", quick=True, task_name=reference)
    demoed = report.candidates[0].to_dict(report.candidates[0].footprint)

    # the optimizer's candidate path (Evaluator -> run_recipe on val), same recipe
    evaluator = Evaluator(
        task,
        base,
        space=None,  # recipe() is replaced below: the space is not read
        budget=Budget(),
        objective=Objective("macs"),
        recovery_epochs=0,
        codebook_epochs=0,
    )
    monkeypatch.setattr(
        evaluator, "recipe", lambda allocation, name: dataclasses.replace(RECIPE, name=name)
    )
    torch.manual_seed(0)
    record = evaluator.evaluate({}, "early exit")

    # the artifact compress wrote, reloaded; its exit counts give the MACs by hand
    model = ts.load(compressed["artifact"], model=task.build_model())
    expected, counts = hand_macs(model, task)
    assert min(counts) >= 5, f"the test needs samples at both exits, got {counts}"
    assert EXIT_PATH < expected < FULL_PATH

    assert compressed["macs"] == expected
    assert demoed["macs"] == expected
    assert record.candidate.footprint.macs == expected
    assert compressed["flops"] == demoed["flops"] == 2 * expected
    # the step history reports the same count, and the objective sees it
    assert compressed["history"][-1]["macs"] == expected
    assert demoed["history"][-1]["macs"] == expected
    assert evaluator.base_val.macs == BASELINE
    assert record.ratio == pytest.approx(expected / BASELINE)
    assert compressed["macs_ratio"] == pytest.approx(BASELINE / expected)
    # both reports show the exit shares
    shares = [round(c / sum(counts), 4) for c in counts]
    for candidate in (compressed, demoed):
        assert candidate["layers"] == {
            "exit 0": {"exit share": shares[0]},
            "exit 1": {"exit share": shares[1]},
        }


def test_static_models_count_one_sample(exit_task):
    """A model whose compute does not depend on its input is counted on one example."""
    from torchslim.measure import input_dependent, model_macs

    _, task = exit_task
    base = task.baseline(progress=False)
    assert not input_dependent(base)
    assert model_macs(base, task).macs == BASELINE
    assert ts.measure(base, task, latency=False).macs == BASELINE
