"""What every command prints for warnings: one line, not the library's file and source line."""
import warnings

import pytest

import worldtune.cli.zoo as zoo_cli
from worldtune.cli import main


def test_warnings_print_as_one_line_and_the_library_format_is_restored(monkeypatch):
    shown = []

    def run(args):  # how Python would print a warning raised by the command
        shown.append(warnings.formatwarning("the image cache is cut short", UserWarning, "/x/worldtune/y.py", 7))
        return 0

    monkeypatch.setattr(zoo_cli, "run", run)
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    before = warnings.formatwarning
    assert main(["zoo"]) == 0
    assert shown == ["warning: the image cache is cut short\n"]
    assert warnings.formatwarning is before
    monkeypatch.setenv("WORLDTUNE_DEBUG", "1")  # the full format, with the file and line
    assert main(["zoo"]) == 0
    assert "/x/worldtune/y.py:7: UserWarning" in shown[1]


def test_a_warning_gets_a_line_of_its_own_under_a_progress_bar(monkeypatch, capsys):
    import os

    from tqdm import tqdm

    def run(args):  # a data warning in the middle of an epoch's bar
        bar = tqdm(total=10, desc="epoch 1/2", mininterval=0)
        bar.update(3)
        warnings.warn("img_7.jpg: decoded size differs from the annotation's")
        bar.update(3)
        bar.close()
        return 0

    monkeypatch.setattr(zoo_cli, "run", run)
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    before = warnings.showwarning
    assert main(["zoo"]) == 0
    err = capsys.readouterr().err
    # the bar's line is cleared first ("\r" + blanks + "\r"), not continued by the warning
    assert "\rwarning: img_7.jpg: decoded size differs from the annotation's\n" in err
    assert "]warning" not in err and "|warning" not in err
    assert warnings.showwarning is before
    # in a DataLoader worker (another process) it starts a new line instead
    from worldtune.cli import warning_printer

    warning_printer(os.getpid() + 1)("cut short", UserWarning, "x.py", 1)
    assert capsys.readouterr().err.startswith("\n")


def test_user_error_and_ctrl_c_give_one_line_and_their_exit_status(monkeypatch, capsys):
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)

    def bad_input(args):
        raise ValueError("instances.json: 'annotations' is not a list")

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_cli, "run", bad_input)
    assert main(["zoo"]) == 2
    assert capsys.readouterr().err.startswith("worldtune zoo: error: instances.json: 'annotations' is not a list")
    monkeypatch.setattr(zoo_cli, "run", ctrl_c)
    assert main(["zoo"]) == 130
    assert capsys.readouterr().err == "worldtune zoo: interrupted\n"


def test_every_command_shows_the_traceback_under_worldtune_debug(tmp_path, monkeypatch, capsys):
    import pytest

    missing = str(tmp_path / "missing.pt")
    commands = [["predict", "--weights", missing, "--classes", "cat", str(tmp_path)],
                ["export", "--weights", missing, "--classes", "cat", "--out", str(tmp_path / "m.onnx")],
                ["eval", "--weights", missing, "--ann", str(tmp_path / "a.json"), "--images", str(tmp_path)],
                ["train", "--weights", missing, "--train-ann", str(tmp_path / "a.json"),
                 "--train-images", str(tmp_path), "--out", str(tmp_path / "run")]]
    for argv in commands:
        monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.startswith(f"worldtune {argv[0]}: error: "), argv
        monkeypatch.setenv("WORLDTUNE_DEBUG", "1")
        with pytest.raises((OSError, ValueError)):
            main(argv)


def test_out_of_memory_is_not_a_user_error_and_names_its_remedy(tmp_path, monkeypatch, capsys):
    """Out of memory: one line suggesting a smaller batch, exit 1 (2 is for the user's mistakes);
    another RuntimeError is a bug and keeps its traceback."""
    import pytest
    import torch

    import worldtune.cli.eval as eval_cli
    import worldtune.engine.train as train
    import worldtune.model.loading as loading

    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    failure = {}

    def fail(*args, **kwargs):
        raise failure["error"]

    monkeypatch.setattr(eval_cli, "_score_model", fail)
    monkeypatch.setattr(loading, "load_model", fail)
    monkeypatch.setattr(train, "fit", fail)
    commands = {"eval": ["eval", "--weights", "w.pt", "--ann", "a.json", "--images", str(tmp_path)],
                "predict": ["predict", "--weights", "w.pt", "--classes", "cat", "--device", "cpu", str(tmp_path)],
                "export": ["export", "--weights", "w.pt", "--classes", "cat", "--out", str(tmp_path / "m.onnx")],
                "train": ["train", "--train-ann", "a.json", "--train-images", str(tmp_path),
                          "--out", str(tmp_path / "run")]}
    for name, argv in commands.items():
        for error in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                      RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")):
            failure["error"] = error
            assert main(argv) == 1, name
            err = capsys.readouterr().err
            assert err.startswith(f"worldtune {name}: error: out of memory ({error}); try a smaller --batch"), name
            assert err.count("\n") == 1
        failure["error"] = RuntimeError("a shape bug")
        with pytest.raises(RuntimeError, match="a shape bug"):
            main(argv)


@pytest.mark.parametrize("argv, complaint", [
    (["predict", "--weights", "none", "--variant", "n", "--text-model", "none", "--classes", "cat", "a.jpg"],
     "argument --text-model: 'none' leaves no CLIP text tower"),
    (["eval", "--weights", "none", "--variant", "n", "--text-model", "None", "--ann", "a.json", "--images", "."],
     "argument --text-model: 'none' leaves no CLIP text tower"),
    (["eval", "--weights", "none", "--variant", "n", "--batch-size", "0", "--ann", "a.json", "--images", "."],
     "argument --batch-size: must be at least 1, got 0"),
    (["eval", "--weights", "none", "--variant", "n", "--workers", "-1", "--ann", "a.json", "--images", "."],
     "argument --workers: must be 0 or more, got -1"),
    (["eval", "--weights", "none", "--variant", "n", "--imgsz", "100", "--ann", "a.json", "--images", "."],
     "argument --imgsz: must be a multiple of 32"),
])
def test_values_no_run_could_use_are_usage_errors(argv, complaint, capsys):
    """Refused while parsing, before any file is read or a hub download of a model named 'none' tried."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_no_error():
    """`worldtune zoo | head`: the pipe closes before the command writes; no error line, no traceback."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "worldtune", "zoo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.stdout.close()  # gone before the interpreter has even started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


@pytest.mark.parametrize("argv, said", [
    (["train", "--lr", "1e-4"], "worldtune train: error: unrecognized arguments: --lr 1e-4 "
                                "(did you mean --set train.lr=... for --lr?)"),
    (["train", "--batchsize", "4"], "worldtune train: error: unrecognized arguments: --batchsize 4 "
                                    "(did you mean --batch-size for --batchsize?)"),
    (["predict", "x.jpg", "--weights", "none", "--clases", "cat"],
     "worldtune predict: error: unrecognized arguments: --clases cat (did you mean --classes for --clases?)"),
    (["zoo", "--xyzzy"], "worldtune zoo: error: unrecognized arguments: --xyzzy"),
    (["train", "--lr=1e-4"], "worldtune train: error: unrecognized arguments: --lr=1e-4 "
                             "(did you mean --set train.lr=... for --lr?)"),  # the flag without its value
    (["train", "batch_size"], "worldtune train: error: unrecognized arguments: batch_size"),  # no option: no guess
    (["predict", "x.jpg", "--weights", "none", "--lr", "1"],  # config keys are train's alone
     "worldtune predict: error: unrecognized arguments: --lr 1"),
])
def test_an_unknown_option_is_told_by_its_command_with_the_nearest_one(argv, said, capsys):
    """Not the top-level parser's 'worldtune: error:' and usage line, which name no command's options."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == said and err.startswith(f"usage: worldtune {argv[0]} ")


def test_an_existing_output_folder_is_tried_itself_not_its_parent(tmp_path, monkeypatch):
    """--out of a folder that exists (a read-only mount inside a writable one) is refused at parsing."""
    import argparse
    import errno

    from worldtune import outputs
    from worldtune.cli.argtypes import output_folder

    real = outputs.tempfile.TemporaryFile
    folder = tmp_path / "mounted"
    folder.mkdir()

    def read_only_inside(*args, dir=None, **kwargs):
        if dir == folder:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", read_only_inside)
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^cannot write {folder}: Read-only file system$"):
        output_folder(str(folder))
    with pytest.raises(argparse.ArgumentTypeError, match=r"Read-only file system$"):
        output_folder(str(folder / "new"))  # to be made inside it
    assert output_folder(str(tmp_path / "beside")) == tmp_path / "beside"
