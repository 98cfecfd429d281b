"""Shared fixtures: an isolated cache, quiet progress bars, tiny tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

import torchslim as ts
from helpers import blobs, tiny_mlp


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session trains into its own cache, never the user's."""
    cache = tmp_path_factory.mktemp("torchslim-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("TORCHSLIM_CACHE", str(cache))
    patcher.setenv("TORCHSLIM_PROGRESS", "0")
    yield cache
    patcher.undo()


@pytest.fixture
def tiny_task() -> ts.Task:
    """A 3-class blob task with a 2-layer MLP, trained for 5 epochs."""
    return ts.Task(
        name="tiny",
        model=tiny_mlp,
        train=blobs(240, seed=0),
        val=blobs(60, seed=1),
        test=blobs(90, seed=2),
        train_config=ts.TrainConfig(lr=0.05, epochs=5, batch_size=32, seed=0),
    )


@pytest.fixture(scope="session")
def mnist1d():
    """The built-in mnist1d-cnn task and its baseline, trained once per session (do not modify)."""
    task = ts.tasks.get("mnist1d-cnn")
    return task, task.baseline(progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module whose tests train: the machine is shared."""
    from torchslim.batches import threads_fixed

    with threads_fixed(1):
        yield


@pytest.fixture(scope="module")
def hf_offline():
    """Hugging Face modules: nothing may be downloaded (``HF_HUB_OFFLINE=1``), one thread."""
    from torchslim.batches import threads_fixed

    patcher = pytest.MonkeyPatch()
    patcher.setenv("HF_HUB_OFFLINE", "1")
    with threads_fixed(1):
        yield
    patcher.undo()


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL URL: ``TORCHSLIM_TEST_PG_URL`` or a private cluster started here.

    Skips when no server can be started, except under ``CI`` where it fails."""
    import os

    from pg_helpers import start_cluster, stop_cluster

    cluster = start_cluster()
    if isinstance(cluster, str):
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {cluster}")
        pytest.skip(cluster)
    try:
        yield cluster.url
    finally:
        stop_cluster(cluster)
