"""Knowledge distillation: the Hinton loss by hand, T² gradient scale, the trainer, bad input."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

import torchslim as ts
from helpers import tiny_mlp
from torchslim.models import build_model
from torchslim.techniques import apply, config_from_dict
from torchslim.techniques.distillation import Distill, distill, embedding_loss, hinton_loss


def test_hinton_loss_equals_hand_computed_value():
    # s = [1, 2, 0], t = [2, 1, 0], T = 2, alpha = 0.7, label 0:
    # p = softmax(t/T) = [0.50648, 0.30720, 0.18632], q = softmax(s/T) = [0.30720, 0.50648, 0.18632]
    # KL(p||q) = 0.0996423, CE(s, 0) = -log softmax(s)[0] = 1.4076060
    # loss = 0.7 * 4 * 0.0996423 + 0.3 * 1.4076060 = 0.7012801
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0]])
    loss = hinton_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.7)
    assert float(loss) == pytest.approx(0.7012801, abs=1e-6)
    soft_only = hinton_loss(student, teacher, None, temperature=2.0, alpha=1.0)
    assert float(soft_only) == pytest.approx(4 * 0.0996423, abs=1e-6)
    assert float(hinton_loss(teacher, teacher, None, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_t_squared_keeps_the_gradient_scale():
    torch.manual_seed(0)
    teacher = torch.randn(16, 10)
    base = torch.randn(16, 10)
    norms = {}
    for temperature in (8.0, 16.0):
        student = base.clone().requires_grad_(True)
        hinton_loss(student, teacher, None, temperature, alpha=1.0).backward()
        norms[temperature] = float(student.grad.norm())
    # d(T²·KL)/ds = T·(q - p) ≈ (s - t)/(10·batch) for large T: independent of T.
    assert norms[16.0] / norms[8.0] == pytest.approx(1.0, abs=0.03)
    # without T² the gradient would shrink by (16/8)² = 4.
    assert norms[16.0] / 16.0**2 / (norms[8.0] / 8.0**2) == pytest.approx(0.25, abs=0.01)


def test_embedding_losses():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert float(embedding_loss(a, b, "cosine")) == pytest.approx(0.5)  # (0 + 1) / 2
    assert float(embedding_loss(a, b, "mse")) == pytest.approx((1 + 0 + 1 + 4) / 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ],
)
def test_bad_kd_settings_are_rejected(kwargs, message):
    with pytest.raises(ts.ConfigError, match=message):
        Distill(**kwargs)
    with pytest.raises(ts.ConfigError, match=message):
        hinton_loss(torch.zeros(1, 3), torch.zeros(1, 3), None, **kwargs)


def test_distill_rejects_mismatched_outputs_and_modifies_nothing(tiny_task):
    student = tiny_mlp(classes=3)
    teacher = tiny_mlp(classes=4)
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(ts.ShapeError, match=r"student outputs \(3,\) but teacher outputs \(4,\)"):
        distill(student, teacher, tiny_task, epochs=1)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(ts.ConfigError, match="student has no layer 'nope'"):
        distill(student, tiny_mlp(), tiny_task, epochs=1, features=[("nope", "0")])
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_feature_hints_train_adapters_and_teacher_is_untouched(tiny_task):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    tiny_task.fit(teacher, progress=False)
    frozen = copy.deepcopy(teacher.state_dict())
    student = tiny_mlp()  # hidden width 16 vs the teacher's 32: a Linear adapter bridges them
    result = distill(student, teacher, tiny_task, epochs=3, features=[("1", "1")])
    assert result.steps == 3 * 8 and math.isfinite(result.final_loss)
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())
    assert tiny_task.evaluate(student) > 0.9


def test_distill_config_is_a_recovery_step(tiny_task):
    teacher = tiny_task.baseline(progress=False)
    config = config_from_dict({"type": "distill", "epochs": 2, "alpha": 0.5, "temperature": 2})
    context = ts.techniques.ApplyContext(task=tiny_task)
    context.teacher = teacher
    student = apply(tiny_mlp(), config, tiny_task, context=context)
    assert context.notes["distill"][0]["steps"] == 2 * 8
    assert tiny_task.evaluate(student) > 0.6


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_distilled_student_learns_from_the_teacher_on_a_transfer_set(mnist1d):
    """KD on a transfer set: data the teacher did not train on (its validation split).

    On its own training set the mnist1d-cnn teacher is at 100% accuracy with a mean
    top-1 probability of 0.9998, so its soft targets there equal the hard labels and
    distillation has nothing to add (measured: KD 0.80-0.84 vs 0.81-0.85 without, over
    T 1-4, alpha 0.3-0.9, 60-150 epochs). On unseen inputs its outputs carry its knowledge.

    What a single run can assert across CPUs: ``benchmarks/accuracy_margins.py`` on an
    Intel(R) Xeon(R) Processor (AVX-512, 1 thread), teachers trained with seeds 0 / 1 / 2
    (another CPU's rounding trains another teacher) x student seeds 0-2, test accuracy on
    1,000 samples (standard error sqrt(0.4 * 0.6 / 1000) = 1.55 points):
    without KD 0.426 / 0.398 / 0.349 (seeds 0-2); KD (T=2, alpha=0.5) minus no-KD
    +0.0 / +0.9 / +4.5, +0.8 / +3.2 / +3.7, +0.4 / +0.5 / +3.2 points (teacher 0 seeds 3, 4:
    -0.3, -0.3); the teacher's soft targets alone (T=4, alpha=1, no label used)
    0.386-0.443 (0.375 for teacher 0, seed 3). KD's gain (mean +1.9 points) is about one standard error and varies
    with the seed as much: "KD beats no-KD by 2 points" (measured +3.9 / +1.5 / +5.4 on
    the machine that wrote it, 0.443 vs 0.425 on an AMD EPYC) is a benchmark figure
    (docs/benchmarks.md), not a single-run test. Asserted instead, each several standard
    errors from every run measured: KD costs no accuracy (>= no-KD - 3 points; worst
    measured -0.3), and a student taught by the teacher alone, without labels, learns the
    task: > 0.33, 3.3x chance (0.10) and ~3 standard errors below the worst measured.
    """
    task, teacher = mnist1d
    transfer = dataclasses.replace(task, train=task.val)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        plain = build_model("mnist1d_cnn", channels=10)
    kd, soft = copy.deepcopy(plain), copy.deepcopy(plain)
    assert ts.count_parameters(teacher) >= 4 * ts.count_parameters(plain)  # 5210 vs 1190
    transfer.fit(plain, epochs=100, progress=False)
    distill(kd, teacher, transfer, epochs=100, temperature=2.0, alpha=0.5)
    distill(soft, teacher, transfer, epochs=100, temperature=4.0, alpha=1.0)
    plain_acc, kd_acc, soft_acc = (transfer.evaluate(m) for m in (plain, kd, soft))
    assert kd_acc >= plain_acc - 0.03, (kd_acc, plain_acc)  # measured 0.426 vs 0.426
    assert soft_acc > 0.33, soft_acc  # measured 0.443 (labels unused)


def test_separable_student_is_4x_smaller_and_rejects_bad_options():
    teacher = build_model("mnist1d_cnn")
    student = build_model("mnist1d_separable")
    assert ts.count_parameters(teacher) == 5210
    assert ts.count_parameters(student) == 1270  # 18·5+18 + 2·(18·7+18 + 18·18+18) + 18·10+10
    assert 4 * ts.count_parameters(student) <= ts.count_parameters(teacher)
    x = torch.randn(3, 1, 40)
    assert student(x).shape == teacher(x).shape == (3, 10)
    with pytest.raises(ts.errors.ConfigError, match="odd"):
        build_model("mnist1d_separable", kernel=4)
    with pytest.raises(ts.errors.ConfigError, match="too short"):
        build_model("mnist1d_separable", blocks=6)
