"""k-means codebooks: clustering, at most 2^b values per layer after fine-tuning, accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.export.packed import packed_io
from torchslim.measure import threads_fixed
from torchslim.techniques import ApplyContext, apply
from torchslim.techniques.codebook import CodebookLayer, CodebookQuant, kmeans_1d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with threads_fixed(1):
        yield


def test_kmeans_finds_known_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    values = centers[torch.arange(400) % 4] + 0.01 * torch.randn(400, generator=generator)
    centroids, indices = kmeans_1d(values.reshape(20, 20), 4)
    torch.testing.assert_close(centroids, centers, atol=0.01, rtol=0)
    assert indices.shape == (20, 20)
    assert torch.equal(indices.reshape(-1), torch.arange(400) % 4)


@pytest.mark.slow
def test_codebook_fine_tuning_keeps_at_most_2_to_the_b_values_and_the_accuracy():
    task = ts.tasks.get("mnist1d-cnn")
    base = task.baseline(progress=False)
    context = ApplyContext(task=task)
    shared = apply(base, CodebookQuant(bits=3, epochs=0), task)
    tuned = apply(base, CodebookQuant(bits=4, epochs=4, lr=1e-3), task, context=context)
    layers = [m for m in tuned.modules() if isinstance(m, CodebookLayer)]
    assert len(layers) == 4
    for layer in layers:
        assert len(torch.unique(layer.shared_weight())) <= 2**4
        assert layer.indices.dtype == torch.uint8
    for layer in (m for m in shared.modules() if isinstance(m, CodebookLayer)):
        assert len(torch.unique(layer.shared_weight())) <= 2**3
    fp32 = ts.measure(base, task, latency=False)
    packed = ts.measure(tuned, task, io=packed_io(tuned), latency=False)
    # the target: within 1 point of fp32 at >= 7x smaller artifact
    assert packed.metric >= fp32.metric - 0.01
    assert fp32.artifact_bytes / packed.artifact_bytes >= 7
    assert task.evaluate(tuned) > task.evaluate(shared)
    assert context.notes["quantization"]["layers"]["classifier"]["bits"] == 4


def test_codebook_needs_a_task_to_fine_tune():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ts.ConfigError, match="codebook_quant fine-tunes for 2 epochs: pass task="):
        apply(model, CodebookQuant(epochs=2))
    assert isinstance(model[0], nn.Linear) and "weight" in dict(model[0].named_parameters())
    with pytest.raises(ts.ConfigError, match="init 'kmeans\\+\\+' is unknown"):
        CodebookQuant(init="kmeans++")
