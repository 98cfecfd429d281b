"""Files from strangers: a checkpoint never runs code, hostile specs get one line, no overwrite."""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchslim as ts
from helpers import file_digest
from test_tasks import USER_TASK
from torchslim.cli import main
from torchslim.models import build_model

MLP = {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [8], "num_classes": 2}}
BIG = 10**12

# PyTorch's own refusal advises turning weights_only off ("set to `False`"), the one step that
# would run the payload: torchslim's message must not pass that on, in any phrasing.
UNSAFE_ADVICE = re.compile(r"weights_only\W{0,3}(?:set to\W{0,3}|=\s*)False")


def _mlp_state() -> dict[str, torch.Tensor]:
    model = build_model("mlp", **MLP["kwargs"])
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _write(path: Path, spec_text: str, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A safetensors file with any spec text (save_checkpoint would refuse a bad one)."""
    save_file(tensors if tensors is not None else _mlp_state(), str(path), {"torchslim": spec_text})
    return path


def _spec(**entries) -> str:
    return json.dumps({"format": "torchslim.checkpoint/1", "task": "digits-mlp", **entries})


EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")

def make():
    raise SystemExit("imported")
"""


@pytest.mark.parametrize("command", ["measure", "export"])
def test_task_file_named_by_a_checkpoint_is_never_imported(tmp_path, capsys, command):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    path = _write(tmp_path / "m.safetensors", _spec(task=f"{evil}:make", arch=MLP))
    args = [command, str(path)] + (["--format", "torch"] if command == "export" else [])
    assert main([*args, "--no-latency"] if command == "measure" else args) == 1
    err = capsys.readouterr().err
    assert not marker.exists()  # the file's code never ran
    assert err.startswith("torchslim: error: ") and err.count("\n") == 1
    assert f"pass --task {evil}:make" in err and "--trust-task" in err
    assert not any(name.startswith("torchslim_user_task") for name in sys.modules if "evil" in name)
    assert not (tmp_path / "m.export.safetensors").exists()


def test_task_options_naming_paths_need_trust(tmp_path, capsys):
    reference = 'text-embedding{"model_dir": "/etc", "texts": "/etc/passwd"}'
    path = _write(tmp_path / "m.safetensors", _spec(task=reference, arch=MLP))
    assert main(["measure", str(path), "--no-latency"]) == 1
    err = capsys.readouterr().err
    assert "options that read files" in err and "--trust-task" in err and err.count("\n") == 1


def test_trusted_task_file_runs(tmp_path, capsys):
    user = tmp_path / "user.py"
    user.write_text(USER_TASK)
    model = torch.nn.Linear(4, 2)
    path = tmp_path / "m.safetensors"
    ts.save_checkpoint(model, path, {"task": f"{user}:make_task"})
    assert main(["measure", str(path), "--no-latency", "--json", "--trust-task"]) == 0
    assert json.loads(capsys.readouterr().out)["footprint"]["params"] == 10
    assert (
        main(["measure", str(path), "--no-latency", "--json", "--task", f"{user}:make_task"]) == 0
    )


DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE = {
    "list instead of object": ("[1, 2, 3]", "expected a JSON object"),
    "deep nesting": (_spec(arch={"name": "mlp", "kwargs": {"x": 1}}, role=None)[:-1]
                     + ', "deep": ' + DEEP + "}", "nested over"),
    "task is a number": (_spec(task=12345), "'task' = int, expected a string"),
    "format is a number": (_spec(format=7), "'format' = int, expected a string"),
    "unknown key": (_spec(evil="x"), "unknown key 'evil'"),
    "arch kwargs 10^12": (
        _spec(arch={"name": "mlp", "kwargs": {"in_features": BIG, "hidden": [8]}}),
        f"'arch.kwargs.in_features' = {BIG}",
    ),
    "arch kwargs of the wrong type": (
        _spec(arch={"name": "mlp", "kwargs": {"in_features": "four"}}),
        "cannot be built|does not match the architecture",  # measure uses the task's model
    ),
    "structure sizes 10^12": (
        _spec(arch=MLP, structure={"layers.0": {"type": "Linear", "in_features": BIG,
                                                "out_features": 8, "bias": True}}),
        f"'structure.layers.0.in_features' = {BIG}",
    ),
    "structure that is a list": (_spec(arch=MLP, structure=[1]), "'structure' = list"),
    "factorized sizes 10^12": (
        _spec(arch=MLP, factorized={"layers.0": {"kind": "svd", "layers": [
            {"type": "Linear", "in_features": 4, "out_features": BIG, "bias": False}]}}),
        f"= {BIG}",
    ),
    "sparse shape 10^12": (
        _spec(arch=MLP, sparse={"format": "torchslim.sparse/1", "tensors": {
            "layers.0.weight": {"encoding": "bitmask", "shape": [BIG, BIG], "dtype": "float32"}}}),
        "sparse tensors decode to more than",
    ),
    "hf config 10^12": (
        _spec(hf={"format": "torchslim.hf/1", "kind": "encoder",
                  "config": {"model_type": "bert", "hidden_size": BIG}}),
        f"'hf.config.hidden_size' = {BIG}",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["measure", "export"])
def test_hostile_specs_are_one_line_checkpoint_errors(tmp_path, capsys, case, command):
    text, expected = HOSTILE[case]
    path = _write(tmp_path / "m.safetensors", text)
    before = file_digest(path)
    args = [command, str(path)] + (["--format", "onnx"] if command == "export" else [])
    assert main(args) == 1  # 1 = a typed error; an unexpected exception would exit 3
    err = capsys.readouterr().err
    assert err.startswith("torchslim: error: ") and err.count("\n") == 1, err[:300]
    assert any(part in err for part in expected.split("|")), err[:300]
    assert "Traceback" not in err and "unexpected error" not in err
    assert file_digest(path) == before
    with pytest.raises(ts.CheckpointError):  # the typed error comes first, not a fallback
        main([*args, "--verbose"])


def test_hf_layer_numbers_are_bounded_by_the_tensors(tmp_path):
    tensors = {"backbone.encoder.layer.999999999.w": torch.zeros(1)}
    spec = _spec(
        hf={"format": "torchslim.hf/1", "kind": "encoder", "config": {"model_type": "bert"}}
    )
    path = _write(tmp_path / "m.safetensors", spec, tensors)
    with pytest.raises(ts.CheckpointError, match="encoder layers up to 999999999 but holds 1"):
        ts.read_checkpoint(path)


def test_any_other_exception_is_one_line_exit_3(monkeypatch, capsys):
    import torchslim.cli as cli

    def boom(args, console):
        raise ZeroDivisionError("x\ny")

    monkeypatch.setattr(cli, "cmd_tasks", boom)
    assert main(["tasks"]) == 3
    err = capsys.readouterr().err
    assert (
        err.startswith("torchslim: unexpected error: ZeroDivisionError: x y")
        and err.count("\n") == 1
    )
    with pytest.raises(ZeroDivisionError):
        main(["tasks", "--verbose"])


# ------------------------------------------------------------------ pickles


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.safetensors", "evil.bin"])
def test_pickles_are_refused_with_a_safe_recipe(tmp_path, capsys, name):
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"weight": torch.zeros(2), "x": Payload()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": Payload()}))
    assert main(["measure", str(path), "--task", "digits-mlp", "--no-latency"]) == 1
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    err = captured.err
    assert err.count("\n") == 1 and not UNSAFE_ADVICE.search(err)
    assert "torchslim convert" in err and "save_checkpoint" in err


def test_convert_a_trusted_state_dict(tmp_path, capsys):
    model = build_model("mlp", **MLP["kwargs"])
    source = tmp_path / "trusted.pth"
    torch.save({"state_dict": model.state_dict()}, source)
    before = file_digest(source)
    out = tmp_path / "trusted.safetensors"
    assert main(["convert", str(source), "--out", str(out)]) == 0
    assert "4 tensors" in capsys.readouterr().out
    state, spec = ts.read_checkpoint(out)
    assert spec == {} and file_digest(source) == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    assert main(["convert", str(evil)]) == 1
    assert not UNSAFE_ADVICE.search(capsys.readouterr().err)
    assert not (tmp_path / "evil.safetensors").exists()


# ------------------------------------------------------------------ outputs


@pytest.fixture
def trained(tmp_path):
    user = tmp_path / "user.py"
    user.write_text(USER_TASK)
    task = f"{user}:make_mlp_task"
    assert main(["train", task, "--out", str(tmp_path / "in"), "--no-latency"]) == 0
    return tmp_path / "in", task


def test_export_default_name_never_replaces_another_file(trained, capsys):
    folder, task = trained
    plain = folder / "model.safetensors"
    pruned = folder / "model.pruned.safetensors"
    pruned.write_bytes(plain.read_bytes())
    before = file_digest(plain)
    assert main(["export", str(pruned), "--format", "torch", "--task", task]) == 0
    assert file_digest(plain) == before  # the file next to it is untouched
    exported = folder / "model.pruned.export.safetensors"
    assert exported.is_file() and str(exported) in capsys.readouterr().out
    # a second run refuses rather than replacing the first one's output
    first = file_digest(exported)
    assert main(["export", str(pruned), "--format", "torch", "--task", task]) == 1
    assert "exists already" in capsys.readouterr().err and file_digest(exported) == first
    assert main(["export", str(pruned), "--format", "onnx", "--task", task]) == 0
    assert (folder / "model.pruned.onnx").is_file() and file_digest(plain) == before


def test_export_out_checks(trained, tmp_path, capsys):
    folder, task = trained
    source = folder / "model.safetensors"
    before = {p.name: file_digest(p) for p in folder.iterdir()}
    link_dir = tmp_path / "elsewhere"
    link_dir.symlink_to(folder)
    cases = {
        str(source): "is the input file",
        str(folder): "is a folder",
        str(folder / "footprint.json" / "x.onnx"): "is a file, not a folder",
        str(link_dir / "footprint.json"): "symbolic link into the input's folder",
    }
    for out, message in cases.items():
        assert main(["export", str(source), "--format", "onnx", "--task", task, "--out", out]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (out, err)
    assert {p.name: file_digest(p) for p in folder.iterdir()} == before


def test_recipe_task_file_is_never_imported(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {evil}:make\nsteps:\n  - magnitude_pruning:\n      sparsity: 0.5\n")
    assert main(["compress", "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert not marker.exists() and err.count("\n") == 1
    assert f"pass {evil}:make as TASK" in err and "--trust-task" in err


# ------------------------------------------------------------------ what a file may cause

_OPENED: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, Path)):
        _OPENED[-1].append(str(Path(os.fsdecode(args[0])).resolve()))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside _opened()


class _opened:  # noqa: N801 - a context manager
    """The files Python opens inside the block (audit events), resolved."""

    def __enter__(self) -> list[str]:
        _OPENED.append([])
        return _OPENED[-1]

    def __exit__(self, *exc) -> None:
        _OPENED.pop()


def test_loading_reads_no_path_the_file_names(tmp_path, capsys, monkeypatch, hf_offline):
    from hf_helpers import tiny_embedding_task
    from torchslim.hf import loading
    from torchslim.hf.loading import load_artifact, save_artifact

    secret = tmp_path / "secret"
    folder, task = tiny_embedding_task(secret, texts=8, seq_len=8)
    model = task.build_model()
    artifact = tmp_path / "files" / "a.safetensors"
    save_artifact(model, artifact, task.spec())
    assert str(secret) in json.dumps(ts.read_checkpoint(artifact)[1])  # it names those paths
    plain = _write(tmp_path / "files" / "p.safetensors", _spec(
        arch=MLP, task=f'text-embedding{{"model_dir": "{folder}", "texts": "{secret}/texts.txt"}}'
    ))  # fmt: skip
    folders_read = []  # model folders are read (in Python and in Rust) through read_folder only
    real_read_folder = loading.read_folder
    monkeypatch.setattr(
        loading, "read_folder", lambda p: folders_read.append(p) or real_read_folder(p)
    )
    with _opened() as opened:
        load_artifact(artifact)
        ts.load_checkpoint(plain)
        for path in (artifact, plain):
            assert main(["measure", str(path), "--no-latency"]) == 1  # untrusted task options
            assert main(["export", str(path), "--format", "onnx"]) == 1
    capsys.readouterr()
    inside = {p for p in opened if p.startswith(str(tmp_path.resolve()))}
    assert inside <= {str(artifact.resolve()), str(plain.resolve())}  # Python opened no other
    assert folders_read == []  # nor was the model folder they name read
    with _opened() as opened:  # the audit hook does see reads of the paths the files name
        loading.read_folder(folder)
    assert str((folder / "config.json").resolve()) in opened
    assert not list((tmp_path / "files").glob("*.onnx"))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"packed": [["w", -1, 0, 4]]}, "'packed[0][1]'"),
        ({"packed": [["w", 4, 0]]}, "with 3 items"),
        ({"packed": "x"}, "'packed' = str, expected a list"),
        ({"zeros": ["a"]}, "'zeros[0]' = str"),
        ({"n32": BIG}, f"'n32' = {BIG}"),
    ],
)
def test_hostile_packed_specs(tmp_path, entries, message):
    from torchslim.export.packed import load_packed

    spec = json.dumps({"format": "torchslim.packed/2", "n32": 0, "n16": 0, **entries})
    path = _write(tmp_path / "p.safetensors", spec, {"data": torch.zeros(8, dtype=torch.uint8)})
    with pytest.raises(ts.CheckpointError, match=message.replace("[", r"\[")):
        load_packed(path, torch.nn.Linear(2, 2))


@pytest.mark.parametrize("loader", ["load_checkpoint", "checkpoint_io", "sparse_io"])
def test_models_are_sized_on_the_meta_device_first(tmp_path, monkeypatch, loader):
    """Sizes within the per-integer bound but 4000 x 4000 in all: refused before allocating."""
    from torchslim import models
    from torchslim.export.sparse import sparse_io
    from torchslim.measure import checkpoint_io

    devices = []
    real_build = models.build_model

    def spy(name, **kwargs):
        model = real_build(name, **kwargs)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(models, "build_model", spy)
    big = {"name": "mlp", "kwargs": {"in_features": 4000, "hidden": [4000], "num_classes": 2}}
    path = _write(tmp_path / "m.safetensors", _spec(arch=big))
    assert path.stat().st_size < 4000  # each integer passes the per-value bound
    load = {
        "load_checkpoint": lambda: ts.load_checkpoint(path),
        "checkpoint_io": lambda: checkpoint_io(None, torch.nn.Linear(1, 1)).load(path),
        "sparse_io": lambda: sparse_io(None).load(path),
    }[loader]
    with pytest.raises(ts.CheckpointError, match="does not match the architecture"):
        load()
    assert devices == ["meta"]  # the 64 MB model was never built for real


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}, "names code to import"),
        ({"model_type": "bert", "attn_implementation": "kernels-community/x"}, "eager or sdpa"),
        ({"model_type": "evil"}, "'hf.config.model_type' = 'evil'"),
    ],
)
def test_hf_configs_cannot_point_at_code(config, message):
    from torchslim.spec import validate_spec

    spec = {"hf": {"format": "torchslim.hf/1", "kind": "encoder", "config": config}}
    with pytest.raises(ts.CheckpointError, match=message):
        validate_spec(spec, "artifact", 10_000)


def test_brackets_inside_strings_are_not_nesting(tmp_path):
    name = "[" * 40 + '{"' + "]" * 3
    path = _write(tmp_path / "m.safetensors", _spec(task_name=name, arch=MLP))
    assert ts.read_checkpoint(path)[1]["task_name"] == name


@pytest.mark.parametrize("text", ["[1, 2]", '{"version": 1, "baseline": 7}', "[" * 50_000])
def test_hostile_results_files_are_one_line(tmp_path, capsys, text):
    path = tmp_path / "results.json"
    path.write_text(text)
    assert main(["report", str(path), "--html", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torchslim: error: results") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()
