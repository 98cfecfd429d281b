"""The ``torchslim`` command line: one function per command, ``main() -> int``.

Exit codes: 0 success, 1 user error (one line, no traceback; ``--verbose`` shows
it), 2 usage error (from argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from torchslim._version import __version__

EXAMPLES = {
    "train": "example: torchslim train mnist1d-cnn --out out/mnist1d",
    "measure": (
        "examples:\n  torchslim measure mnist1d-cnn\n"
        "  torchslim measure out/mnist1d/model.safetensors --json\n"
        "  torchslim measure my_task.py:make_task --layers"
    ),
    "demo": "example: torchslim demo --out out/demo",
    "tasks": "example: torchslim tasks",
}


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="data folder for tasks that read files (e.g. cifar10-vgg)"
    )


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
    measure.add_argument("--task", help="task of a checkpoint that does not name one")
    measure.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    _add_task_options(measure)
    _add_measure_options(measure)
    measure.set_defaults(handler=cmd_measure)

    demo = command("demo", "Run the main job on the built-in default task (mnist1d-cnn).")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--quick", action="store_true", help="skip latency timing (smoke runs)")
    demo.set_defaults(handler=cmd_demo)

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
    from torchslim.checkpoint import write_text_atomic
    from torchslim.measure import checkpoint_io, measure

    task = tasks.get(args.task, data_dir=args.data_dir)
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
    from torchslim.checkpoint import load_checkpoint, read_checkpoint
    from torchslim.errors import CheckpointError
    from torchslim.measure import existing_file_io, measure

    target = Path(args.target)
    is_file = target.suffix in {".safetensors", ".pt", ".pth", ".bin"} or target.is_file()
    if is_file and not (args.target.endswith(".py") or ".py:" in args.target):
        _, spec = read_checkpoint(target)
        task_ref = args.task or spec.get("task")
        if not task_ref:
            raise CheckpointError(
                f"checkpoint {target} does not name its task; pass --task NAME_OR_FILE.py:function"
            )
        task = tasks.get(task_ref, data_dir=args.data_dir)
        model, _ = load_checkpoint(target, model=task.build_model())
        name, io = target.name, existing_file_io(target, model)
    else:
        task = tasks.get(args.target, data_dir=args.data_dir)
        model = task.baseline()
        name, io = task.name, None
    footprint = measure(model, task, io=io, **_measure_kwargs(args))
    if is_file:
        footprint.artifact = str(target)
    if args.json:
        payload = {
            "task": task.name,
            "metric_name": task.metric_name,
            "footprint": footprint.to_dict(),
        }
        print(json.dumps(payload, indent=2))
    else:
        _print_footprint(console, name, footprint, args.layers)
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Train (or load) the default task's baseline and measure it into DIR/results.json."""
    from torchslim import tasks
    from torchslim.checkpoint import write_text_atomic
    from torchslim.measure import measure

    task = tasks.get(tasks.DEFAULT_TASK)
    console.print(f"[bold]torchslim demo[/bold] on {task.name}: training or loading the baseline")
    model = task.baseline()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    footprint = measure(model, task, artifact=out / "baseline.safetensors", latency=not args.quick)
    results = {
        "task": task.name,
        "metric_name": task.metric_name,
        "baseline": footprint.to_dict(),
        "candidates": [],
        "best": None,
        "budget": None,
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    _print_footprint(console, task.name, footprint, layers=True)
    console.print(f"wrote {out / 'results.json'} and {out / 'baseline.safetensors'}")
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
    console = Console()
    try:
        return int(args.handler(args, console) or 0)
    except TorchslimError as exc:
        if args.verbose:
            raise
        print(f"torchslim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchslim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
