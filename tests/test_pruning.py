"""Unstructured and N:M pruning: exact counts, importance ranking, masks, schedules, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts
from torchslim.techniques import ApplyContext, Scope, apply, config_from_dict, config_to_dict
from torchslim.techniques.pruning import (
    GradientPruning,
    MagnitudePruning,
    NMSparsity,
    RandomPruning,
    TaylorPruning,
    check_nm,
    is_masked,
    make_permanent,
    sparsity_of,
)
from torchslim.techniques.schedules import agp_sparsity, gradual, iterative, one_shot


def planted() -> nn.Sequential:
    """Two Linear layers whose 24 weights have magnitudes 1..24 in a scrambled order."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    values = torch.arange(1, 25, dtype=torch.float32)
    values = values[torch.randperm(24, generator=torch.Generator().manual_seed(3))]
    signs = torch.where(torch.arange(24) % 3 == 0, -1.0, 1.0)
    values = values * signs
    with torch.no_grad():
        model[0].weight.copy_(values[:16].view(4, 4))
        model[2].weight.copy_(values[16:].view(2, 4))
    return model


def test_global_magnitude_50_zeroes_exactly_the_smallest_half():
    model = planted()
    pruned = make_permanent(apply(model, MagnitudePruning(sparsity=0.5, mode="global")))
    weights = torch.cat([pruned[0].weight.flatten(), pruned[2].weight.flatten()]).detach()
    original = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).detach()
    assert int((weights == 0).sum()) == 12  # floor(0.5 * 24)
    # the threshold: magnitudes 1..12 go, 13..24 stay, whichever layer they are in
    assert torch.equal(weights != 0, original.abs() > 12)
    assert float(original[weights == 0].abs().max()) == 12.0
    assert float(original[weights != 0].abs().min()) == 13.0
    assert torch.equal(weights[weights != 0], original[original.abs() > 12])
    assert int((original == 0).sum()) == 0  # the input model is untouched


def test_layer_mode_and_overrides_and_exclusions():
    model = planted()
    layer = apply(model, MagnitudePruning(sparsity=0.5, mode="layer"))
    assert sparsity_of(layer) == {"0": 0.5, "2": 0.5}
    override = apply(model, MagnitudePruning(sparsity=0.5, overrides=(("2", 0.25),)))
    assert sparsity_of(override)["2"] == 0.25
    assert sparsity_of(override)["0"] == 0.5  # the global pool is layer 0 alone
    kept = apply(model, MagnitudePruning(sparsity=0.75, scope=Scope(exclude=("re:2",))))
    assert sparsity_of(kept) == {"0": 0.75, "2": 0.0} and not is_masked(kept[2])
    typed = apply(model, MagnitudePruning(sparsity=0.5, overrides=(("Linear", 0.0),)))
    assert sparsity_of(typed) == {"0": 0.0, "2": 0.0}


def gradient_task(model: nn.Module) -> ts.Task:
    """Feature 2 is huge, so the loss gradient of the weights reading it is the largest."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator) * 0.01
    inputs[:, 2] = 100.0
    labels = torch.zeros(64, dtype=torch.long)  # one class: batch gradients do not cancel
    data = TensorDataset(inputs, labels)
    return ts.Task(
        name="planted-gradient",
        model=model,
        train=data,
        test=data,
        train_config=ts.TrainConfig(epochs=0, batch_size=16),
    )


@pytest.mark.parametrize("config", [GradientPruning, TaylorPruning])
def test_gradient_and_taylor_rank_a_planted_large_gradient_first(config):
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # equal magnitudes: only the gradient can tell weights apart
        model[0].bias.zero_()
    task = gradient_task(model)
    pruned = apply(model, config(sparsity=0.75, batches=2), task=task)
    kept = (pruned[0].weight != 0).nonzero().tolist()
    assert kept == [[0, 2], [1, 2]]
    with pytest.raises(ts.ConfigError, match="pass task= to apply"):
        apply(model, config(sparsity=0.5))


def test_random_pruning_is_seeded_and_exact():
    model = planted()
    a = apply(model, RandomPruning(sparsity=0.5, seed=1))
    b = apply(model, RandomPruning(sparsity=0.5, seed=1))
    assert torch.equal(a[0].weight, b[0].weight)
    assert int((a[0].weight == 0).sum() + (a[2].weight == 0).sum()) == 12


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_masks_have_exactly_n_nonzeros_per_group(n, m):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4, 8), nn.Linear(8, 1))
    context = ApplyContext()
    pruned = apply(model, NMSparsity(n=n, m=m), context=context)
    for layer in (pruned[0], pruned[2], pruned[3]):
        groups = layer.weight.movedim(1, -1).reshape(-1, m)
        assert torch.all((groups != 0).sum(dim=1) == n)  # no weight was zero before
        assert check_nm(layer.weight, n, m)
    assert sparsity_of(pruned) == {"0": 1 - n / m, "2": 1 - n / m, "3": 1 - n / m}
    # the largest n of every group survive
    group = model[2].weight[0, :m].abs()
    assert torch.equal(pruned[2].weight[0, :m] != 0, group >= group.sort().values[m - n])


def test_nm_skips_unsupported_layers_with_a_reason_or_refuses_named_ones():
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))
    context = ApplyContext()
    pruned = apply(model, NMSparsity(), context=context)
    assert context.notes["pruning"][0]["skipped"] == [
        {"layer": "0", "reason": "input size 3 is not a multiple of m=4"}
    ]
    assert not is_masked(pruned[0]) and check_nm(pruned[1].weight, 2, 4)
    with pytest.raises(ts.UnsupportedError, match=r"layer 0 cannot take 2:4 sparsity"):
        apply(model, NMSparsity(scope=Scope(include=("0",))))


def test_masks_hold_during_fine_tuning_and_become_permanent(tiny_task):
    model = tiny_task.baseline(progress=False)
    pruned = apply(model, MagnitudePruning(sparsity=0.6), task=tiny_task)
    zeros = [layer.weight == 0 for layer in (pruned[0], pruned[2])]
    tiny_task.fit(pruned, epochs=2, progress=False)
    assert all(
        torch.all(layer.weight[z] == 0)
        for layer, z in zip((pruned[0], pruned[2]), zeros, strict=True)
    )
    make_permanent(pruned)
    assert not any(is_masked(m) for m in pruned.modules())
    assert {n for n, _ in pruned.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(
        torch.all(layer.weight[z] == 0)
        for layer, z in zip((pruned[0], pruned[2]), zeros, strict=True)
    )


def test_masked_models_save_as_plain_checkpoints(tiny_task, tmp_path):
    model = tiny_task.baseline(progress=False)
    pruned = apply(model, MagnitudePruning(sparsity=0.5))
    ts.save_checkpoint(pruned, tmp_path / "m.safetensors")
    loaded, _ = ts.load_checkpoint(tmp_path / "m.safetensors", model=tiny_task.build_model())
    x = tiny_task.inputs(4)
    assert torch.equal(loaded(x), pruned(x))


def test_schedules_reach_the_target(tiny_task):
    model = tiny_task.baseline(progress=False)
    config = MagnitudePruning(sparsity=0.7, mode="layer")
    for pruned in (
        one_shot(model, config, tiny_task, finetune_epochs=1),
        iterative(model, config, tiny_task, steps=3, epochs_per_step=1),
        gradual(model, config, tiny_task, epochs=2, every=2),
    ):
        assert not any(is_masked(m) for m in pruned.modules())
        assert sparsity_of(pruned) == {"0": 89 / 128, "2": 33 / 48}  # floor(0.7 * weights)
        assert tiny_task.evaluate(pruned) > 0.8
    assert agp_sparsity(0, 0.0, 0.8, 0, 100) == 0.0
    assert agp_sparsity(50, 0.0, 0.8, 0, 100) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert agp_sparsity(100, 0.0, 0.8, 0, 100) == 0.8


def test_iterative_schedules_run_from_recipe_configs(tiny_task):
    model = tiny_task.baseline(progress=False)
    context = ApplyContext(task=tiny_task)
    step = config_from_dict(
        {"type": "iterative_channel_pruning", "ratio": 0.5, "steps": 2, "epochs_per_step": 1}
    )
    pruned = apply(model, step, task=tiny_task, context=context)
    # 16 hidden units: 25% after the first step (12), 50% of the original after the second
    widths = [row["layers"][0]["out_after"] for row in context.notes["pruning"]]
    assert widths == [12, 8] and pruned[0].out_features == 8 and pruned[2].in_features == 8
    assert tiny_task.evaluate(pruned) > 0.8
    assert model[0].out_features == 16  # the input is not modified
    unstructured = config_from_dict(
        {
            "type": "iterative_pruning",
            "sparsity": 0.7,
            "mode": "layer",
            "steps": 3,
            "epochs_per_step": 1,
            "ramp": "cubic",
        }
    )
    pruned = apply(model, unstructured, task=tiny_task)
    assert not any(is_masked(m) for m in pruned.modules())
    assert sparsity_of(pruned) == {"0": 89 / 128, "2": 33 / 48}
    assert tiny_task.evaluate(pruned) > 0.8
    with pytest.raises(ts.ConfigError, match="iterative_pruning.steps must be an int >= 1"):
        config_from_dict({"type": "iterative_pruning", "steps": 0})
    with pytest.raises(ts.ConfigError, match="ramp 'exp' is unknown"):
        config_from_dict({"type": "iterative_channel_pruning", "ramp": "exp"})
    with pytest.raises(ts.ConfigError, match="needs a task"):
        apply(model, unstructured)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MagnitudePruning(sparsity=1.0), r"sparsity must be a number in \[0, 1\), got 1.0"),
        (lambda: MagnitudePruning(sparsity=-0.1), r"sparsity must be a number in \[0, 1\)"),
        (lambda: MagnitudePruning(mode="both"), "mode 'both' is unknown"),
        (lambda: MagnitudePruning(overrides=(("0", 1.5),)), "sparsity of override '0'"),
        (lambda: NMSparsity(n=4, m=4), "N:M sparsity needs n < m, got 4:4"),
        (lambda: NMSparsity(n=0, m=4), "needs n >= 1"),
        (lambda: GradientPruning(batches=0), "batches must be an int >= 1"),
    ],
)
def test_bad_configs_are_one_line_errors(make, message):
    with pytest.raises(ts.ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_scope_matching_nothing_is_an_error_and_modifies_nothing():
    model = planted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ts.ConfigError, match="scope matches no layer"):
        apply(model, MagnitudePruning(scope=Scope(include=("re:nothing.*",))), inplace=True)
    with pytest.raises(ts.ConfigError, match="names no module"):
        apply(model, MagnitudePruning(scope=Scope(exclude=("classifier",))), inplace=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(is_masked(m) for m in model.modules())


def test_configs_round_trip_with_overrides():
    config = MagnitudePruning(sparsity=0.8, overrides=(("re:features\\.0", 0.0),))
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_mnist1d_cnn_80_percent_agp_beats_one_shot_pruning(mnist1d):
    """AGP's gain over one-shot pruning is many standard errors; its gap to fp32 is not.

    Another CPU's float rounding trains another baseline. ``benchmarks/accuracy_margins.py
    --parts pruning --seeds 0`` on an Intel(R) Xeon(R) Processor (AVX-512, 1 thread),
    baselines trained with seeds 0 / 1 / 2 (fp32 0.920 / 0.901 / 0.922): AGP 0.894 / 0.842
    / 0.883 (-2.6 / -5.9 / -3.9 points), one-shot + 15 epochs 0.798 / 0.779 / 0.744 (AGP
    gains +9.6 / +6.3 / +13.9); with fine-tuning seeds 1 / 2 on baselines 1 / 2: AGP 0.864 /
    0.864, one-shot 0.777 / 0.754. The old single-run assertion "loses at most 2 points"
    (-1.9 on the machine that wrote it, one test sample of margin) failed on every baseline
    here. Asserted: AGP beats one-shot by > 3 points (half the smallest gain, about 2
    standard errors of a difference of two accuracies near 0.8-0.9 on the 1,000-sample
    test split, 1.6 points), and a floor 8 points below fp32 (> 2 standard errors of 0.95
    points beyond the worst measured).
    """
    task, base = mnist1d
    baseline = task.evaluate(base)
    # AGP: the cubic ramp reaches 80% halfway, the second half recovers at 80%
    config = MagnitudePruning(sparsity=0.8)
    pruned = gradual(base, config, task, epochs=60, lr=1e-2, every=5, ramp_fraction=0.5)
    assert sum(sparsity_of(pruned).values()) > 0  # permanent zeros
    total = sum(m.weight.numel() for m in pruned.modules() if hasattr(m, "weight"))
    zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules() if hasattr(m, "weight"))
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    accuracy = task.evaluate(pruned)
    once = task.evaluate(one_shot(base, config, task, finetune_epochs=15, lr=1e-2))
    assert accuracy > once + 0.03, (accuracy, once)
    assert accuracy >= baseline - 0.08, (baseline, accuracy)


@pytest.mark.usefixtures("one_thread")
def test_mnist1d_cnn_80_percent_with_distillation_stays_within_five_points(mnist1d):
    """AGP with distillation from the unpruned model (mixup inputs) as a recipe step.

    The issue's target, within 1 point of fp32, is a benchmark figure (docs/benchmarks.md,
    "Accuracy margins"), not a single-run test: on an Intel(R) Xeon(R) Processor (AVX-512,
    1 thread), baselines trained with seeds 0 / 1 / 2 (fp32 0.920 / 0.901 / 0.922):
    0.916 / 0.891 / 0.899 (-0.4 / -1.0 / -2.3 points); fine-tuning seeds 1 / 2 on baselines
    1 / 2: 0.896 / 0.902 (-0.5 / -2.0); on the machine that wrote the old 1-point test,
    +0.9 / +0.6 / +1.6 over fine-tuning seeds. The floor here, 5 points, is ~3 standard
    errors (0.95 points near 0.9 on 1,000 test samples) beyond the worst measured.
    """
    from torchslim.techniques import apply
    from torchslim.techniques.schedules import GradualPruning

    task, base = mnist1d
    baseline = task.evaluate(base)
    config = GradualPruning(
        sparsity=0.8, epochs=60, lr=1e-2, every=5, ramp_fraction=0.5, distill=True, mixup=0.4
    )
    pruned = apply(base, config, task)
    total = sum(m.weight.numel() for m in pruned.modules() if hasattr(m, "weight"))
    zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules() if hasattr(m, "weight"))
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    accuracy = task.evaluate(pruned)
    assert accuracy >= baseline - 0.05, (baseline, accuracy)
    assert task.evaluate(base) == baseline  # the input model is untouched
    with pytest.raises(ts.ConfigError, match="temperature"):
        GradualPruning(distill=True, temperature=0.0)
    with pytest.raises(ts.ConfigError, match="mixup"):
        GradualPruning(mixup=-1.0)


def test_pruned_models_can_be_applied_to_again():
    """apply() deep-copies its input: a freshly masked model must allow that."""
    import copy

    from torchslim.techniques import CONFIGS, apply

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    once = apply(model, CONFIGS["magnitude_pruning"](sparsity=0.5))
    twice = apply(once, CONFIGS["magnitude_pruning"](sparsity=0.75))
    copy.deepcopy(twice)
    assert ts.count_nonzero(twice) == 10 + int(0.25 * 80)  # biases + the kept quarter of 80 weights
