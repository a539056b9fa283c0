"""The `minibigr` command and the package surface: help texts, clean errors, a light import."""

import json
import subprocess
import sys

import pytest

from minibigr.cli import build_parser, main
from minibigr.model import BiGR, BiGRConfig

COMMANDS = ("train-tokenizer", "encode", "train", "sample", "eval-tokenizer", "demo", "app")


def test_every_command_has_help(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: minibigr " + command in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors_not_tracebacks(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "nothing" in err and "fashion-mnist" in err
    BiGR(BiGRConfig.preset("tiny-32", dim=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "run" / "model")
    assert main(["sample", "--model", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer beside the BiGR" in err and "--tokenizer" in err and "Traceback" not in err
    assert main(["sample", "--model", str(tmp_path / "run"), "--tokenizer", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "nowhere" in err
    assert main(["train", "--codes", str(tmp_path)]) == 2
    assert "minibigr encode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-tokenizer", "--dataset", "mnist"])


@pytest.mark.parametrize("argv", [["evaluate", "--num-samples", "-5"], ["sample", "--per-class", "0"],
                                  ["train", "--codes", "c", "--batch-size", "0"], ["probe", "--max-iter", "-1"]])
def test_counts_below_one_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert f"argument {argv[-2]}: must be at least 1, got {argv[-1]}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "inpaint", "interpolate", "enrich"])
@pytest.mark.parametrize("out", ["grid", "grid.xyz"])
def test_an_output_that_is_not_an_image_file_is_refused_before_any_work(command, out, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--out", out])
    assert exit_.value.code == 2
    assert f"argument --out: '{out}' is not an image file name: end it in .png" in capsys.readouterr().err
    assert build_parser().parse_args(["sample", "--out", "grid.JPG"]).out == "grid.JPG"


def test_import_is_light_and_never_touches_the_reference():
    code = ("import sys, minibigr; from minibigr import BiGR, BinaryAutoencoder, BiGRPipeline, transcoder, sampler; "
            "import json; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert {"torch", "numpy", "minibigr"} <= loaded
    assert not loaded & {"reference", "numba", "matplotlib", "hypothesis", "pytest", "nbclient", "PIL", "gradio"}


def test_console_script_entry_point_is_declared():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["minibigr"] == "minibigr.cli:main"
