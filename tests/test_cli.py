"""Tests for mrcnn/cli.py."""

import pytest

from mrcnn.callbacks import TrainingDivergedError
from mrcnn.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USER_ERROR, parse_canvas, parse_overrides, run_command


def _raise(error: BaseException):
    def command():
        raise error
    return command


def test_success_is_zero_and_runs_the_command():
    ran = []
    assert run_command(lambda: ran.append(1), prog="x.py") == 0
    assert ran == [1]


@pytest.mark.parametrize("error", [FileNotFoundError("no such file: data/annotations.json"),
                                   FileExistsError("export/1 is not empty: pass overwrite=True"),
                                   ValueError("IMAGE_MIN_DIM must be an int, got 'abc' (str)")])
def test_user_errors_print_one_line_without_traceback(error, capsys):
    assert run_command(_raise(error), prog="x.py") == EXIT_USER_ERROR == 2
    captured = capsys.readouterr()
    assert captured.err == f"x.py: error: {error}\n"
    assert captured.out == ""


def test_show_traceback_keeps_the_traceback(capsys):
    assert run_command(_raise(ValueError("bad")), prog="x.py", show_traceback=True) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("x.py: error: bad\n")


def test_a_diverged_run_exits_1_with_one_line(capsys):
    error = TrainingDivergedError("the loss became NaN or infinite at epoch 2, batch 0; ...")
    assert run_command(_raise(error), prog="x.py") == EXIT_DIVERGED == 1
    assert capsys.readouterr().err == f"x.py: error: {error}\n"


def test_other_errors_propagate():
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(_raise(RuntimeError("a bug")), prog="x.py")


def test_ctrl_c_exits_130_with_the_hint(capsys):
    assert run_command(_raise(KeyboardInterrupt()), prog="x.py", interrupted_hint="resume with --model last") == 130
    assert EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "resume with --model last\n"


def test_parse_overrides_upper_cases_names_and_reads_python_or_json_values():
    assert parse_overrides(["image_max_dim=64", "BACKBONE=resnet50", "SCALE_JITTER=(48, 64)", "TRAIN_BN=true",
                            "SEED=null", "MASK_SHAPE=[14, 14]", "LEARNING_RATE=1e-3", "NAME=my run"]) == {
        "IMAGE_MAX_DIM": 64, "BACKBONE": "resnet50", "SCALE_JITTER": (48, 64), "TRAIN_BN": True, "SEED": None,
        "MASK_SHAPE": [14, 14], "LEARNING_RATE": 1e-3, "NAME": "my run"}
    assert parse_overrides(None) == {}
    for bad in ("IMAGE_MAX_DIM", "=3"):
        with pytest.raises(ValueError, match=f"FIELD=VALUE items, got '{bad}'"):
            parse_overrides([bad])


def test_parse_canvas_reads_h_w_and_names_bad_text():
    assert parse_canvas(None) is None
    assert parse_canvas("128,64") == (128, 64) and parse_canvas("128x64") == (128, 64)
    for text in ("128", "128,64,3", "a,b", "0,64", "-64,64"):
        with pytest.raises(ValueError, match=f"--canvas must be H,W .*got {text!r}"):
            parse_canvas(text)


def test_a_path_of_the_wrong_kind_is_a_user_error(tmp_path, capsys):
    """Found in review: --logs naming a file raised NotADirectoryError with a traceback."""
    from mrcnn.cli import run_command

    afile = tmp_path / "afile"
    afile.write_text("")

    def make_run_folder():
        (afile / "run").mkdir()

    assert run_command(make_run_folder, prog="x.py") == 2
    assert capsys.readouterr().err.startswith("x.py: error: [Errno 20] Not a directory")
