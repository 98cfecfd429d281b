"""k-means codebooks: clustering, at most 2^b values per layer after fine-tuning, accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.export.packed import packed_io
from torchslim.techniques import ApplyContext, apply
from torchslim.techniques.codebook import (
    CodebookLayer,
    CodebookQuant,
    kmeans_1d,
    kmeans_keep_zeros,
)
from torchslim.techniques.pruning import MagnitudePruning, make_permanent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kmeans_finds_known_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    values = centers[torch.arange(400) % 4] + 0.01 * torch.randn(400, generator=generator)
    centroids, indices = kmeans_1d(values.reshape(20, 20), 4)
    torch.testing.assert_close(centroids, centers, atol=0.01, rtol=0)
    assert indices.shape == (20, 20)
    assert torch.equal(indices.reshape(-1), torch.arange(400) % 4)


@pytest.mark.slow
def test_codebook_fine_tuning_keeps_at_most_2_to_the_b_values_and_the_accuracy(mnist1d):
    """Counts and sizes exactly; accuracies with margins wide against the baseline's spread.

    Another CPU's float rounding trains another 150-epoch baseline, and the codebook's loss
    depends on that baseline far more than on the fine-tuning seed.
    ``benchmarks/accuracy_margins.py`` measured on an Intel(R) Xeon(R) Processor (AVX-512,
    1 thread), baselines trained with seeds 0 / 1 / 2 (fp32 0.920 / 0.901 / 0.922) x
    fine-tuning seeds 0-2: the 4-bit packed artifact at -0.2 to -0.3 / -2.7 to -2.9 /
    -2.8 to -3.1 points from fp32 (an AMD EPYC measured -2.0 on its baseline). "Within 1
    point" is therefore a benchmark target (met on one baseline in three, see
    docs/benchmarks.md), not a test: the floor here is 5 points, 2 standard errors
    (sqrt(0.9 * 0.1 / 1000) = 0.95 points on the 1,000-sample test split) beyond the
    worst measured. Fine-tuning's own effect is tested at 2 bits, where it is large: the
    centroids' 4 epochs gain +8.7 to +9.2 / +5.5 to +5.9 / +11.1 to +11.5 points over the
    plain k-means (0.554 / 0.575 / 0.471); at 4 bits they gained between -0.3 and +1.7,
    within the noise. The 3-point margin is ~2 standard errors (1.55 points near 0.6) and
    about half the smallest gain.
    """
    task, base = mnist1d
    context = ApplyContext(task=task)
    untuned = apply(base, CodebookQuant(bits=2, epochs=0), task)
    tuned = apply(base, CodebookQuant(bits=4, epochs=4, lr=1e-3), task, context=context)
    layers = [m for m in tuned.modules() if isinstance(m, CodebookLayer)]
    assert len(layers) == 4
    for layer in layers:
        assert len(torch.unique(layer.shared_weight())) <= 2**4
        assert layer.indices.dtype == torch.uint8
    for layer in (m for m in untuned.modules() if isinstance(m, CodebookLayer)):
        assert len(torch.unique(layer.shared_weight())) <= 2**2
    fp32 = ts.measure(base, task, latency=False)
    packed = ts.measure(tuned, task, io=packed_io(template=tuned), latency=False)
    assert packed.metric >= fp32.metric - 0.05, (packed.metric, fp32.metric)
    assert fp32.artifact_bytes / packed.artifact_bytes >= 7
    assert context.notes["quantization"]["layers"]["classifier"]["bits"] == 4
    two_bit = apply(base, CodebookQuant(bits=2, epochs=4, lr=1e-3), task)
    tuned_acc, untuned_acc = task.evaluate(two_bit), task.evaluate(untuned)
    assert tuned_acc > untuned_acc + 0.03, (tuned_acc, untuned_acc)


def test_codebook_needs_a_task_to_fine_tune():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ts.ConfigError, match="codebook_quant fine-tunes for 2 epochs: pass task="):
        apply(model, CodebookQuant(epochs=2))
    assert isinstance(model[0], nn.Linear) and "weight" in dict(model[0].named_parameters())
    with pytest.raises(ts.ConfigError, match="init 'kmeans\\+\\+' is unknown"):
        CodebookQuant(init="kmeans++")


def test_kmeans_keep_zeros_reserves_one_exact_zero():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(40, 25, generator=generator)
    values[values.abs() < 1.0] = 0.0  # ~68 % zeros
    centroids, indices, zero_index = kmeans_keep_zeros(values, 8)
    assert centroids.numel() == 8 and centroids[zero_index] == 0
    assert torch.equal(centroids, centroids.sort().values)
    assert torch.equal(indices == zero_index, values == 0)
    assert len(torch.unique(centroids[indices])) <= 8


def test_pruned_layer_keeps_exactly_its_zeros_through_codebook_fine_tuning(tiny_task):
    base = tiny_task.baseline(progress=False)
    pruned = apply(base, MagnitudePruning(sparsity=0.8, mode="layer"), tiny_task)
    make_permanent(pruned)
    zeros = {
        name: int((m.weight == 0).sum())
        for name, m in pruned.named_modules()
        if isinstance(m, nn.Linear)
    }
    assert zeros["0"] >= 0.79 * base[0].weight.numel()
    context = ApplyContext(task=tiny_task)
    untuned = apply(pruned, CodebookQuant(bits=3, epochs=0), tiny_task)
    tuned = apply(pruned, CodebookQuant(bits=3, epochs=3, lr=0.05), tiny_task, context=context)
    for name, layer in tuned.named_modules():
        if not isinstance(layer, CodebookLayer):
            continue
        weight = layer.shared_weight()
        assert int((weight == 0).sum()) == zeros[name]
        assert torch.equal(weight == 0, pruned.get_submodule(name).weight == 0)
        assert len(torch.unique(weight)) <= 2**3
        assert 0 <= int(layer.zero_index) < 2**3
        assert context.notes["quantization"]["layers"][name]["kept_zeros"] == zeros[name]
        before = untuned.get_submodule(name).centroids
        assert not torch.equal(layer.centroids, before)  # the non-zero centroids trained
        again = copy.deepcopy(layer)
        assert torch.equal(again.shared_weight(), weight)
    # the opt-out clusters the zeros like any other weight (the previous behaviour)
    plain = apply(pruned, CodebookQuant(bits=3, keep_zeros=False), tiny_task)
    assert all(int(m.zero_index) == -1 for m in plain.modules() if isinstance(m, CodebookLayer))


def test_dense_layers_reserve_no_zero_and_old_state_dicts_load():
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    shared = apply(model, CodebookQuant(bits=2, iterations=5))
    assert int(shared[0].zero_index) == -1
    assert len(torch.unique(shared[0].shared_weight())) == 4
    state = {k: v for k, v in shared.state_dict().items() if not k.endswith("zero_index")}
    again = copy.deepcopy(shared)
    with torch.no_grad():
        again[0].zero_index.fill_(0)
    again.load_state_dict(state)  # saved before zero_index existed: no reserved zero
    assert int(again[0].zero_index) == -1
    assert torch.equal(again[0].shared_weight(), shared[0].shared_weight())


def test_centroid_gradient_is_the_mean_over_its_cluster():
    """Summed cluster gradients scale with layer size and diverge under SGD; the mean does not."""
    from torchslim.techniques.codebook import CodebookLayer

    layer = CodebookLayer(
        torch.nn.Linear(4, 2, bias=False),
        torch.tensor([-1.0, 2.0]),
        torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.uint8),
        bits=1,
    )
    assert torch.equal(layer.shared_weight(), torch.tensor([[-1.0, -1, -1, 2], [-1, -1, 2, 2]]))
    layer.shared_weight().sum().backward()
    # d(sum)/d(weight) = 1 everywhere: the mean over each cluster is 1 (sums would be 5 and 3)
    assert torch.allclose(layer.centroids.grad, torch.tensor([1.0, 1.0]))
