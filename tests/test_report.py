"""results.json contract, the terminal table and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image
from rich.console import Console

import torchslim as ts
from helpers import CANDIDATE_KEYS
from torchslim.measure import LayerFootprint
from torchslim.report import Candidate, Report, results_table


def footprint(metric, size, nonzero, macs, b1, bn, simulated=False, runtime="torch"):
    return ts.Footprint(
        metric=metric,
        metric_name="accuracy",
        params=1000,
        nonzero_params=nonzero,
        artifact_bytes=size,
        macs=macs,
        flops=2 * macs,
        latency_ms={"batch_1": b1, "batch_N": bn},
        latency_spread_ms={"batch_1": 0.01, "batch_N": 0.1},
        runtime=runtime,
        threads=1,
        batch_n=64,
        artifact=None,
        simulated=simulated,
        per_layer=[
            LayerFootprint("fc1", "Linear", 800, nonzero - 200, macs - 100),
            LayerFootprint("fc2", "Linear", 200, 200, 100),
        ],
    )


def sample_report() -> Report:
    base = footprint(0.9000, 4000, 1000, 1000, 2.0, 20.0)
    pruned = Candidate(
        "magnitude 80%",
        ["magnitude_pruning", "finetune"],
        footprint(0.8950, 1000, 360, 1000, 2.0, 20.0),
        recipe={"name": "p", "steps": [{"magnitude_pruning": {"sparsity": 0.8}}]},
        train_seconds=3.25,
        history=[
            {"step": "magnitude_pruning", "metric": 0.80},
            {"step": "finetune", "metric": 0.895},
        ],
        layers={"fc1": {"sparsity": 0.8}, "fc2": {"sparsity": 0.0}},
    )
    quant = Candidate(
        "static int8",
        ["static_quant"],
        footprint(0.8800, 1100, 1000, 1000, 2.0, 20.0, True),
        deployed=footprint(0.8790, 1200, 1000, 1000, 0.5, 4.0, runtime="onnxruntime"),
        deployed_reference=footprint(0.9, 4000, 1000, 1000, 1.0, 10.0, runtime="onnxruntime"),
    )
    return Report(
        task="tiny",
        metric_name="accuracy",
        baseline=base,
        candidates=[pruned, quant],
        best="magnitude 80%",
        budget={"max_drop": 0.01, "drop_type": "absolute"},
        pareto=["magnitude 80%"],
    )


def test_results_json_has_the_contract_keys(tmp_path):
    report = sample_report()
    path = report.save(tmp_path)
    data = json.loads(path.read_text())
    assert {"task", "metric_name", "baseline", "candidates", "best", "budget"} <= set(data)
    first = data["candidates"][0]
    assert CANDIDATE_KEYS <= set(first)
    assert first["size_ratio"] == 4.0 and first["params_ratio"] == 1000 / 360
    assert first["metric_drop"] == 0.9 - 0.895 and first["speedup"] == {
        "batch_1": 1.0,
        "batch_N": 1.0,
    }
    second = data["candidates"][1]
    assert second["simulated"] is True and second["deployed_speedup"] == {
        "batch_1": 2.0,
        "batch_N": 2.5,
    }
    assert Report.load(path).to_dict() == data


def test_budget_check_absolute_and_relative():
    report = sample_report()
    assert report.within_budget(report.candidates[0])  # drop 0.005 <= 0.01
    assert not report.within_budget(report.candidates[1])  # drop 0.02
    report.budget = {"max_drop": 0.025, "drop_type": "relative"}  # 2.5% of 0.9 = 0.0225
    assert report.within_budget(report.candidates[1])


def test_terminal_table_and_html_show_the_same_numbers(tmp_path):
    report = sample_report()
    report.save(tmp_path)
    page = (tmp_path / "report.html").read_text()
    console = Console(width=250, record=True)
    console.print(results_table(report))
    terminal = console.export_text()
    for value in (
        "4.00",
        "2.78",
        "0.8950",
        "+0.0050",
        "3.2",
        "static int8 (simulated)",
        "deployed (onnxruntime)",
        "2.50",
    ):
        assert value in page, value
        assert value in terminal, value
    assert '<tr class="best">' in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_html_images_decode(tmp_path):
    report = sample_report()
    report.save(tmp_path)
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 3  # Pareto, per-layer, history
    for encoded in images:
        picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
        picture.verify()
        assert picture.size[0] > 300


def test_loading_bad_results(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(ts.ConfigError, match="is not valid JSON"):
        Report.load(bad)
    with pytest.raises(ts.ConfigError, match="does not exist"):
        Report.load(tmp_path / "absent.json")


def test_size_front_keeps_only_non_dominated_candidates():
    report = sample_report()
    # magnitude: 0.895 at 1000 B; static int8: 0.880 at 1100 B (worse on both) -> dominated
    assert report.size_front() == ["magnitude 80%"]
