"""Every benchmark script imports: a renamed or moved torchslim name breaks it here, not
halfway through a long run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

IMPORT_ALL = """
import importlib.util, sys
sys.path.insert(0, {folder!r})
failed = []
for path in {paths!r}:
    spec = importlib.util.spec_from_file_location("bench_" + path.rsplit("/", 1)[1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        failed.append(f"{{path}}: {{type(exc).__name__}}: {{exc}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_script_imports() -> None:
    paths = sorted(str(p) for p in BENCHMARKS.glob("*.py"))
    assert len(paths) >= 15
    code = IMPORT_ALL.format(folder=str(BENCHMARKS), paths=paths)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
