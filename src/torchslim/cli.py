"""The ``torchslim`` command line: one function per command, ``main() -> int``.

Exit codes: 0 success, 1 user error (one line, no traceback; ``--verbose`` shows
it), 2 usage error (from argparse), 3 any other exception (a bug or an unchecked input:
one line too, the traceback only with ``--verbose``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from torchslim._version import __version__
from torchslim.artifacts import format_names
from torchslim.hardware import machine_record

if TYPE_CHECKING:
    from torchslim.task import Task

EXAMPLES = {
    "train": "example: torchslim train mnist1d-cnn --out out/mnist1d",
    "measure": (
        "examples:\n  torchslim measure mnist1d-cnn\n"
        "  torchslim measure out/mnist1d/model.safetensors --json\n"
        "  torchslim measure my_task.py:make_task --layers"
    ),
    "demo": "example: torchslim demo --out out/demo",
    "tasks": "example: torchslim tasks",
    "compress": (
        "examples:\n  torchslim compress mnist1d-cnn --recipe examples/prune_finetune.yaml --out out/p\n"
        "  torchslim compress my_task.py:make_task --recipe examples/static_int8.yaml --no-latency"
    ),
    "report": "example: torchslim report out/p/results.json --html out/p/report.html",
    "export": (
        "examples:\n  torchslim export out/train/model.safetensors --format onnx-int8\n"
        "  torchslim export out/p/channels.safetensors --format packed --bits 4 --out small.bin"
    ),
    "convert": "example: torchslim convert trusted.pt --out model.safetensors",
    "analyze": "examples:\n  torchslim analyze digits32-resnet\n  torchslim analyze mnist1d-cnn --json",
    "optimize": (
        "examples:\n  torchslim optimize digits-mlp --max-drop 1.0 --objective size --out out/opt\n"
        "  torchslim optimize mnist1d-cnn --max-drop 1 --objective macs --trials 40 "
        "--storage sqlite:///study.db --study mnist1d-macs\n"
        "--max-drop is in points: 1.0 = 1 percentage point of accuracy (absolute) or 1% of "
        "the baseline (relative)"
    ),
    "study": (
        "example: torchslim study --storage postgresql://user:pw@db-host/studies --study vgg-size"
    ),
}


_HF_OPTIONS = ("model_dir", "texts", "pairs", "data", "seq_len", "batch_sizes")


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="data folder for tasks that read files (e.g. cifar10-vgg)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where training and statistics run: auto (first accelerator, else CPU), "
        "cpu (default), cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--amp", choices=("bf16", "fp16"), help="mixed-precision training (default: off)"
    )
    hf = parser.add_argument_group("transformer tasks (text-embedding, text-classification)")
    hf.add_argument("--model-dir", help="local Hugging Face / sentence-transformers model folder")
    hf.add_argument("--texts", help="texts file, one per line (default: the built-in set)")
    hf.add_argument("--pairs", help="sentence1,sentence2,score file: adds Spearman")
    hf.add_argument("--data", help="text,label .csv or .jsonl (text-classification)")
    hf.add_argument("--seq-len", type=int, help="tokens per input (default 128)")
    hf.add_argument(
        "--batch-sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        help="latency batch sizes, comma-separated (default 1,32)",
    )


def _add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-task",
        action="store_true",
        help="use the task the checkpoint names even when it is a .py file or reads paths "
        "(a file never runs code otherwise)",
    )


def _set_device(task: Task, args: argparse.Namespace) -> None:
    """Apply --device / --amp to the task's train config (checked against what torch sees)."""
    import dataclasses

    from torchslim.device import check_amp, resolve_device

    device = getattr(args, "device", "cpu")
    amp = getattr(args, "amp", None)
    check_amp(amp, resolve_device(device))
    task.train_config = dataclasses.replace(task.train_config, device=device, amp=amp)


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", default="torch", help="latency runtime (default: torch eager)")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads while timing (default 1)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="the larger batch timed (default 64)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the latency benchmark")
    parser.add_argument("--layers", action="store_true", help="also print the per-layer table")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="torchslim",
        description="Compress PyTorch models and measure them honestly.",
        epilog="Run `torchslim COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"torchslim {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
        return sub

    train = command("train", "Train (or load the cached) baseline of a task, save and measure it.")
    train.add_argument("task", help="built-in task name or path/to/file.py:function")
    train.add_argument("--out", default="out/train", help="output folder (default out/train)")
    train.add_argument("--retrain", action="store_true", help="ignore the cached baseline")
    _add_task_options(train)
    _add_measure_options(train)
    train.set_defaults(handler=cmd_train)

    measure = command("measure", "Measure a task's baseline or a checkpoint: the full footprint.")
    measure.add_argument("target", help="task name, path/to/file.py:function, or a checkpoint file")
    measure.add_argument("--task", help="the checkpoint's task (instead of the one it names)")
    _add_trust_option(measure)
    measure.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    _add_task_options(measure)
    _add_measure_options(measure)
    measure.set_defaults(handler=cmd_measure)

    demo = command("demo", "Run the main job on the built-in default task (mnist1d-cnn).")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument(
        "--quick", action="store_true", help="fewer epochs and shorter timing (smoke runs)"
    )
    demo.set_defaults(handler=cmd_demo)

    analyze = command(
        "analyze", "List prunable layers and coupled channel groups of a task's model."
    )
    analyze.add_argument("task", help="built-in task name or path/to/file.py:function")
    analyze.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    _add_task_options(analyze)
    analyze.set_defaults(handler=cmd_analyze)

    compress = command(
        "compress", "Run a YAML recipe on a task; measure the result against the baseline."
    )
    compress.add_argument("task", nargs="?", help="task (default: the recipe's 'task' field)")
    compress.add_argument("--recipe", required=True, help="YAML recipe file (see docs/recipes.md)")
    _add_trust_option(compress)
    compress.add_argument(
        "--out", default="out/compress", help="output folder (default out/compress)"
    )
    _add_task_options(compress)
    _add_measure_options(compress)
    compress.set_defaults(handler=cmd_compress)

    export = command(
        "export", "Convert a checkpoint to torch, onnx, onnx-int8 or packed; measure the result."
    )
    export.add_argument(
        "artifact", help="a torchslim checkpoint (.safetensors) or a .pt state dict"
    )
    export.add_argument("--format", required=True, choices=format_names(export=True))
    export.add_argument("--out", help="output file (default: next to the input, by format)")
    export.add_argument("--task", help="the checkpoint's task (instead of the one it names)")
    _add_trust_option(export)
    export.add_argument("--bits", type=int, default=8, help="weight bits for --format packed (2-8)")
    export.add_argument(
        "--mode", default="static", choices=("static", "dynamic"), help="onnx-int8 quantization"
    )
    _add_task_options(export)
    export.set_defaults(handler=cmd_export)

    report = command("report", "Print a results.json as a table and write its HTML report.")
    report.add_argument("results", help="a results.json written by demo, compress or optimize")
    report.add_argument("--html", help="write the HTML report here (default: next to the JSON)")
    report.add_argument("--markdown", action="store_true", help="print the table as markdown")
    report.set_defaults(handler=cmd_report)

    optimize = command(
        "optimize", "Find the most compressed model within an accuracy budget (per-layer search)."
    )
    optimize.add_argument("task", help="built-in task name or path/to/file.py:function")
    optimize.add_argument(
        "--max-drop", type=float, default=1.0, help="allowed metric drop in points (default 1.0)"
    )
    optimize.add_argument("--drop-type", default="absolute", choices=("absolute", "relative"))
    optimize.add_argument("--objective", default="size", help="size, macs or latency")
    optimize.add_argument("--runtime", default="torch", help="latency runtime: torch, onnxruntime")
    optimize.add_argument("--batch", type=int, default=1, help="latency batch size (default 1)")
    optimize.add_argument(
        "--strategy",
        default="auto",
        choices=_StrategyChoices(),
        metavar="STRATEGY",
        help="a registered strategy (greedy, optuna) or auto (optuna with --trials/--storage)",
    )
    optimize.add_argument(
        "--techniques",
        help="comma list, e.g. magnitude_pruning,codebook_quant (default by objective)",
    )
    optimize.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="TECHNIQUE=V1,V2",
        help="grid of one technique, e.g. codebook_quant=8,4,3 (repeatable)",
    )
    limit = optimize.add_mutually_exclusive_group()
    limit.add_argument(
        "--trials",
        type=int,
        help="verifications (greedy) or study trials (default 12 / 30, fewer on large tasks)",
    )
    limit.add_argument(
        "--time-limit",
        type=float,
        help="seconds after which no new candidate is verified (default 1500 without --trials)",
    )
    optimize.add_argument("--storage", help="sqlite:///study.db or any SQLAlchemy URL")
    optimize.add_argument("--study", help="study name (shared by workers; resumable)")
    optimize.add_argument(
        "--heartbeat",
        type=int,
        help="seconds between a running trial's heartbeats in a stored study (default 10); "
        "a trial silent for 3 of them (its worker died) is failed and its settings retried",
    )
    optimize.add_argument(
        "--recovery-epochs",
        type=int,
        help="recovery epochs after pruning (default: half the task's epochs, 1 to 20, fewer "
        "on large tasks so a default search ends: see docs/techniques.md; "
        "0: no training at all, codebook centroids not fine-tuned either)",
    )
    optimize.add_argument(
        "--recovery",
        default="distill",
        choices=("distill", "finetune"),
        help="recovery after pruning: distillation from the baseline (default) or fine-tuning",
    )
    optimize.add_argument(
        "--margin",
        type=float,
        default=0.25,
        help="fraction of the budget held back on the val split (default 0.25)",
    )
    optimize.add_argument(
        "--sensitivity-epochs",
        type=int,
        help="recovery epochs before each sensitivity point (default 1, 0 on large tasks; 0: none)",
    )
    optimize.add_argument("--single-objective", action="store_true", help="TPE on the objective")
    optimize.add_argument("--out", default="out/optimize", help="output folder")
    optimize.add_argument("--no-latency", action="store_true", help="do not time the final model")
    _add_task_options(optimize)
    optimize.set_defaults(handler=cmd_optimize)

    convert = command(
        "convert", "Convert a trusted .pt/.pth/.bin state dict to .safetensors (weights only)."
    )
    convert.add_argument("source", help="a PyTorch state dict file (any suffix)")
    convert.add_argument("--out", help="output file (default: SOURCE with .safetensors)")
    convert.set_defaults(handler=cmd_convert)

    study = command("study", "Progress of a stored optimizer study, from any machine.")
    study.add_argument("--storage", required=True, help="the workers' --storage URL")
    study.add_argument("--study", required=True, help="the workers' --study name")
    study.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    study.set_defaults(handler=cmd_study)

    tasks = command("tasks", "List the built-in tasks.")
    tasks.set_defaults(handler=cmd_tasks)
    return parser


# ------------------------------------------------------------------ commands


def _measure_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runtime": args.runtime,
        "threads": args.threads,
        "batch_n": args.batch_size,
        "latency": not args.no_latency,
    }


def _print_footprint(console: Console, name: str, footprint: Any, layers: bool) -> None:
    from torchslim.report import footprint_table, layer_table_view

    console.print(footprint_table([(name, footprint)], title=f"{name}: measured"))
    if layers:
        console.print(layer_table_view(footprint))


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    """Train or load the baseline, copy its checkpoint to --out, measure it."""
    from torchslim import tasks
    from torchslim.fileio import write_text_atomic
    from torchslim.measure import checkpoint_io, measure

    task = tasks.get(args.task, data_dir=args.data_dir)
    _set_device(task, args)
    start = time.perf_counter()
    model = task.baseline(retrain=args.retrain)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.safetensors"
    info = task.baseline_info()
    io = checkpoint_io(task, model, spec=info)
    footprint = measure(model, task, artifact=checkpoint, io=io, **_measure_kwargs(args))
    payload = {
        "task": task.name,
        "metric_name": task.metric_name,
        "checkpoint": str(checkpoint),
        "train_seconds": info.get("train_seconds", 0.0),
        "footprint": footprint.to_dict(),
    }
    write_text_atomic(out / "footprint.json", json.dumps(payload, indent=2))
    _print_footprint(console, task.name, footprint, args.layers)
    console.print(
        f"baseline ready in {seconds:.1f}s (training took {info.get('train_seconds', 0.0):.1f}s "
        f"when it ran); checkpoint {checkpoint}, footprint {out / 'footprint.json'}"
    )
    return 0


def cmd_measure(args: argparse.Namespace, console: Console) -> int:
    """Measure a task's baseline or a checkpoint file."""
    from torchslim import tasks
    from torchslim.checkpoint import read_checkpoint
    from torchslim.measure import existing_file_io, measure
    from torchslim.tasks import resolve_task

    target = Path(args.target)
    spec: dict = {}
    is_file = target.suffix in {".safetensors", ".pt", ".pth", ".bin"} or target.is_file()
    if is_file and not (args.target.endswith(".py") or ".py:" in args.target):
        _, spec = read_checkpoint(target)
        where = f"checkpoint {target}"
        task = resolve_task(spec, args.task, where, trust=args.trust_task, data_dir=args.data_dir)
        _set_device(task, args)
        from torchslim.reload import load

        # rebuilt from the file plus the original model (the task's, or the file's built-in
        # architecture); a transformer artifact is rebuilt from its own spec
        builtin = isinstance(spec.get("arch"), dict) or "hf" in spec
        model = load(target, model=None if builtin else task.build_model())
        name, io = target.name, existing_file_io(target, model)
    else:
        task = tasks.get(args.target, data_dir=args.data_dir)
        _set_device(task, args)
        model = task.baseline()
        name, io = task.name, None
    footprint = measure(model, task, io=io, **_measure_kwargs(args))
    here = machine_record(args.threads)
    recorded = spec.get("hardware") if is_file else None
    if is_file:
        footprint.artifact = str(target)
    if args.json:
        payload = {
            "task": task.name,
            "metric_name": task.metric_name,
            "footprint": footprint.to_dict(),
            "hardware": {"measured_on": here, "file_written_on": recorded},
        }
        print(json.dumps(payload, indent=2))
    else:
        _print_footprint(console, name, footprint, args.layers)
        from torchslim.hardware import describe

        console.print(f"measured here on {describe(here)}, {args.threads} thread(s)")
        if is_file:
            console.print(
                f"the file was written on {describe(recorded)}"
                if recorded
                else "the file records no machine (written before torchslim recorded one)"
            )
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Every technique family on the default task, measured side by side."""
    from torchslim.demo import run_demo

    run_demo(args.out, quick=args.quick, console=console)
    return 0


def cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    """Print every prunable layer / coupled group of a task's model, with skip reasons."""
    from torchslim import tasks
    from torchslim.analyze import analysis_tables, analyze

    task = tasks.get(args.task, data_dir=args.data_dir)
    _set_device(task, args)
    analysis = analyze(task)
    if args.json:
        print(json.dumps({"task": task.name, **analysis.to_dict()}, indent=2))
    else:
        for table in analysis_tables(analysis, task.name):
            console.print(table)
    return 0


def cmd_compress(args: argparse.Namespace, console: Console) -> int:
    """Validate the recipe, run it, write results.json, report.html, the recipe and the artifact."""
    from torchslim.api import compress
    from torchslim.errors import TaskError
    from torchslim.recipe import Recipe
    from torchslim.report import Report, results_table
    from torchslim.tasks import resolve_task

    recipe = Recipe.from_yaml(args.recipe)  # validated before anything runs
    if not (args.task or recipe.task):
        raise TaskError(f"recipe {args.recipe} names no task; pass TASK on the command line")
    task = resolve_task(
        {"task": recipe.task},
        args.task,
        f"recipe {args.recipe}",
        trust=args.trust_task,
        data_dir=args.data_dir,
        option="{} as TASK",
    )
    _set_device(task, args)
    out = Path(args.out)
    run = compress(  # what ts.compress does: run_recipe, then results.json, report, recipe
        recipe,
        task,
        out=out,
        latency=not args.no_latency,
        runtime=args.runtime,
        threads=args.threads,
        batch_n=args.batch_size,
    )
    report = Report.load(out / "results.json")
    console.print(results_table(report))
    if args.layers:
        _print_footprint(console, run.candidate.name, run.candidate.footprint, layers=True)
    console.print(f"wrote {out / 'results.json'}, {out / 'report.html'} and the artifact in {out}")
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    """Convert a checkpoint; print the artifact's bytes and its measured metric."""
    from rich.table import Table

    from torchslim.export.convert import (
        check_output,
        default_output,
        export_artifact,
        load_source,
    )

    if args.out:
        out = check_output(args.out, args.artifact)
    else:
        out = default_output(args.artifact, args.format)
    model, task = load_source(
        args.artifact, args.task, args.data_dir, args.trust_task, fmt=args.format
    )
    _set_device(task, args)
    result = export_artifact(model, task, args.format, out, bits=args.bits, mode=args.mode)
    table = Table(title=f"exported {args.artifact}", title_justify="left")
    for column in ("format", "artifact", "bytes", f"{task.metric_name} (source)", task.metric_name):
        table.add_column(column, justify="left" if column in ("format", "artifact") else "right")
    table.add_row(
        result.format,
        str(result.path),
        f"{result.artifact_bytes:,}",
        f"{result.source_metric:.4f}",
        f"{result.metric:.4f}",
    )
    console.print(table)
    return 0


def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    """A trusted PyTorch state dict -> .safetensors (read with ``weights_only=True``)."""
    from torchslim.checkpoint import convert_state_dict

    source = Path(args.source)
    out = Path(args.out) if args.out else source.with_suffix(".safetensors")
    count, size = convert_state_dict(source, out)
    console.print(f"wrote {out}: {count} tensors, {size:,} bytes (weights only, no pickle)")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Print a results.json and write its HTML page."""
    from torchslim.report import Report, results_table
    from torchslim.report.html import write_html

    results = Path(args.results)
    report = Report.load(results)
    html_path = Path(args.html) if args.html else results.with_name("report.html")
    write_html(report, html_path)
    if args.markdown:
        from torchslim.report import markdown_table

        print(markdown_table(report), end="")
    else:
        console.print(results_table(report))
    console.print(f"wrote {html_path}")
    return 0


class _StrategyChoices:
    """``--strategy`` choices: ``auto`` and the registered strategies, read when first
    needed (so building the parser imports no search code)."""

    def _names(self) -> tuple[str, ...]:
        from torchslim.search.strategies import strategy_names

        return ("auto", *strategy_names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Any:
        return iter(self._names())


def cmd_optimize(args: argparse.Namespace, console: Console) -> int:
    """Search per-layer settings within the budget; write results.json, report.html, recipe."""
    from torchslim import tasks
    from torchslim.errors import ConfigError
    from torchslim.report import results_table
    from torchslim.search.budget import Budget
    from torchslim.search.optimize import optimize
    from torchslim.search.options import OptimizeOptions

    ranges: dict[str, list[float]] = {}
    for item in args.range:
        name, _, values = item.partition("=")
        try:
            ranges[name.strip()] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise ConfigError(f"--range {item!r} is malformed; use TECHNIQUE=V1,V2,...") from exc
    techniques = (
        [t.strip() for t in args.techniques.split(",") if t.strip()] if args.techniques else None
    )
    small_budget = Budget(args.max_drop, args.drop_type).small_budget_warning()
    if small_budget:  # said once, before the task loads; optimize() would repeat it
        print(f"torchslim: warning: {small_budget}", file=sys.stderr)
        warnings.filterwarnings("ignore", message=re.escape(small_budget))
    options = OptimizeOptions(
        max_drop=args.max_drop,
        drop_type=args.drop_type,
        objective=args.objective,
        runtime=args.runtime,
        batch=args.batch,
        strategy=args.strategy,
        techniques=tuple(techniques) if techniques is not None else None,
        ranges={k: tuple(v) for k, v in ranges.items()} if ranges else None,
        trials=args.trials,
        time_limit=args.time_limit,
        storage=args.storage,
        study=args.study,
        out=args.out,
        recovery_epochs=args.recovery_epochs,
        recovery=args.recovery,
        margin=args.margin,
        sensitivity_epochs=args.sensitivity_epochs,
        multi_objective=not args.single_objective,
        latency=not args.no_latency,
        heartbeat=args.heartbeat,
    )
    task = tasks.get(args.task, data_dir=args.data_dir)
    _set_device(task, args)
    result = optimize(task, options)
    if result.answered_by is not None:
        console.print(
            f"{result.report.notes[-2]}; the answer (results.json, best.yaml) is written by "
            f"worker {result.answered_by} into {args.out}"
        )
        return 0
    console.print(results_table(result.report))
    out = Path(args.out)
    if result.met and result.best is not None:
        console.print(f"budget met: best {result.best.name}; recipe {out / 'best.yaml'}")
    else:
        console.print(
            "[bold red]budget NOT met[/bold red]: the closest candidate is saved as best-found"
        )
    console.print(
        f"wrote {out / 'results.json'} and {out / 'report.html'} in {result.seconds:.0f}s"
    )
    return 0


def cmd_study(args: argparse.Namespace, console: Console) -> int:
    """Print a stored study's trial states and trials per worker."""
    from torchslim.search.optuna_search import study_status

    status = study_status(args.storage, args.study)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    states = ", ".join(f"{state.lower()} {n}" for state, n in sorted(status["states"].items()))
    console.print(f"study {args.study!r}: {states or 'no trials'}")
    for worker, count in status["trials_per_worker"].items():
        console.print(f"  {worker}: {count} finished trial(s)")
    console.print(
        f"  suggestions pruned as duplicates without training: {status['duplicates_pruned']}"
    )
    best = status["best_feasible_ratio"]
    console.print(
        "best cost ratio within the val budget so far: "
        + (f"{best:.4f} (1/{1 / best:.2f})" if best else "none yet")
    )
    return 0


def cmd_tasks(args: argparse.Namespace, console: Console) -> int:
    """List built-in tasks."""
    from rich.table import Table

    from torchslim import tasks

    table = Table(title="built-in tasks", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for entry in tasks.list_tasks():
        note = " (needs --data-dir)" if entry.needs_data_dir else ""
        table.add_row(
            entry.name + (" *" if entry.name == tasks.DEFAULT_TASK else ""),
            entry.description + note,
        )
    console.print(table)
    console.print("user tasks: path/to/file.py:function returning torchslim.Task")
    return 0


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    from torchslim.errors import TorchslimError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=200)  # logs: no wrapping
    try:
        if hasattr(args, "model_dir"):  # options of the transformer tasks
            from torchslim import tasks as task_registry

            task_registry.set_task_options(**{k: getattr(args, k, None) for k in _HF_OPTIONS})
        return int(args.handler(args, console) or 0)
    except TorchslimError as exc:
        if args.verbose:
            raise
        print(f"torchslim: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchslim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a raw traceback
        if args.verbose:
            raise
        print(
            f"torchslim: unexpected error: {type(exc).__name__}: {_one_line(exc)} (a bug or an "
            "input torchslim does not check yet; rerun with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 3


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] + ("..." if len(text) > 500 else "")


if __name__ == "__main__":
    sys.exit(main())
