"""The public API: ``import torchslim as ts`` gives every verb and every technique config.

README.md and docs/*.md teach only this API; the tests below keep them true.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import torchslim as ts
from torchslim.techniques import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# ``ts.measure`` is the measuring function (the documented API), which shadows the module of
# the same name as an attribute of the package: ``from torchslim.measure import X`` still works.
SHADOWED = {"torchslim.measure"}


def test_every_registered_technique_config_is_top_level():
    # the package's own techniques (tests register test-only ones in the same registry)
    shipped = {n: c for n, c in CONFIGS.items() if c.__module__.startswith("torchslim.")}
    assert len(shipped) >= 29
    for name, cls in shipped.items():
        assert getattr(ts, cls.__name__, None) is cls, f"ts.{cls.__name__} ({name}) is missing"
        assert cls.__name__ in ts.__all__


def test_all_lists_exactly_the_public_names():
    assert len(ts.__all__) == len(set(ts.__all__))
    for name in ts.__all__:
        assert hasattr(ts, name), name
    public = {
        name
        for name, value in vars(ts).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"tasks", "__version__"} == set(ts.__all__)
    for verb in ("apply", "run", "compress", "optimize", "load", "save", "measure", "Recipe"):
        assert verb in ts.__all__


def test_import_torchslim_does_not_import_transformers():
    code = (
        "import sys, torchslim as ts; ts.LinearInt8(); ts.HeadPruning(ratio=0.5); "
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_submodules_are_not_shadowed_by_their_packages():
    """``import torchslim.search.sensitivity as s`` gives the module, for every module."""
    checked = 0
    for info in pkgutil.walk_packages(ts.__path__, "torchslim."):
        if info.name.endswith("__main__") or info.name in SHADOWED:
            continue
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, info.name
        checked += 1
    assert checked > 60
    import torchslim.search.optimize as optimize_module
    import torchslim.search.sensitivity as sensitivity_module

    assert isinstance(sensitivity_module, types.ModuleType)
    assert isinstance(optimize_module, types.ModuleType)
    assert callable(sensitivity_module.sensitivity) and optimize_module.optimize is ts.optimize


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
            blocks.append((path.name, match.group(1)))
    return blocks


def test_docs_python_examples_use_only_the_top_level_api():
    blocks = _python_blocks()
    assert len(blocks) >= 8
    used: set[str] = set()
    for where, code in blocks:
        compile(code, where, "exec")  # valid Python
        for line in code.splitlines():
            assert not re.match(r"\s*(from|import)\s+torchslim\b(?!\s+as\s+ts\b)", line), (
                f"{where}: {line.strip()!r} imports below the top level; use `import torchslim as ts`"
            )
        assert "CONFIGS[" not in code, f"{where}: use ts.<ClassName>, not CONFIGS[...]"
        assert not re.search(r"\btorchslim\.\w+\.", code), f"{where}: a deep path"
        used |= set(re.findall(r"\bts\.(\w+)", code))
    assert {"apply", "run", "compress", "optimize", "load", "MagnitudePruning"} <= used
    for name in used:
        assert name in ts.__all__, f"the docs use ts.{name}, which the API does not export"


def test_every_ts_name_in_the_docs_exists():
    """Inline ``ts.X`` / ``torchslim.X(`` mentions in the prose resolve too."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for name in set(re.findall(r"`ts\.(\w+)", text)):
            assert hasattr(ts, name), f"{path.name} names ts.{name}"


@pytest.mark.usefixtures("one_thread")
def test_readme_api_example_runs(tmp_path, monkeypatch, mnist1d):
    """The README's main example, as written, on the built-in task (shorter training)."""
    (code,) = [
        code
        for where, code in _python_blocks()
        if where == "README.md" and 'ts.tasks.get("mnist1d-cnn")' in code
    ]
    monkeypatch.chdir(ROOT)
    # the example's last lines train and search: keep them, but small
    code = code.replace("ts.FineTune(epochs=2)", "ts.FineTune(epochs=1)")
    code = code.replace('out="out/cp"', f'out="{tmp_path / "cp"}", latency=False')
    code = code.replace(
        'objective="size", out="out/opt")',
        f'objective="size", out="{tmp_path / "opt"}", trials=2, recovery_epochs=0, '
        "codebook_epochs=0, sensitivity_epochs=0, latency=False, progress=False)",
    )
    code = code.replace("ts.measure(base, task)", "ts.measure(base, task, latency=False)")
    code = code.replace(
        "ts.measure_many([base, other], task)",
        "ts.measure_many([base, other], task, latency=False)",
    )
    recipe = tmp_path / "magnitude_pruning.yaml"
    recipe.write_text((ROOT / "examples/magnitude_pruning.yaml").read_text().replace("10", "1"))
    code = code.replace(
        'ts.Recipe.from_yaml("examples/magnitude_pruning.yaml"), task)',
        f'ts.Recipe.from_yaml("{recipe}"), task, latency=False)',
    )
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    run, best = namespace["run"], namespace["best"]
    assert namespace["pruned"] is not namespace["base"]
    assert ts.count_nonzero(namespace["pruned"]) < 0.3 * ts.count_parameters(namespace["base"])
    assert (tmp_path / "cp" / "results.json").exists() and (
        tmp_path / "cp" / "recipe.yaml"
    ).exists()
    assert run.candidate.footprint.artifact_bytes == Path(run.artifact).stat().st_size
    assert run.candidate.techniques == ["channel_pruning", "finetune"]
    assert run.candidate.footprint.macs < 0.6 * namespace["fp"].macs  # half the channels
    assert isinstance(best, ts.OptimizeResult)
