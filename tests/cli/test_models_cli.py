import pytest

from worldtune.cli import main
from worldtune.model.summary import variant_summary


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "zoo", "eval", "show-data"):
        assert command in out


def test_models_lists_every_variant_with_counts(capsys):
    assert main(["models", "--imgsz", "320"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and line.split()[0] in
            ("n", "s", "m", "l", "x", "xl", "l_efficient_neck")}
    assert set(rows) == {"n", "s", "m", "l", "x", "xl", "l_efficient_neck"}
    assert rows["s"][1] == "12.76" and rows["s"][2] == "76.19"  # official S: 76,187,960 with the text tower


def test_flops_scale_with_image_area():
    small, large = variant_summary("s", 320)["gflops"], variant_summary("s", 640)["gflops"]
    assert large / small == pytest.approx(4.0, rel=0.02)
    assert variant_summary("l")["gflops"] > variant_summary("m")["gflops"] > large


@pytest.mark.parametrize("args, message", [(["--imgsz", "100"], "multiple of 32"),
                                           (["--num-texts", "0"], "at least 1")])
def test_models_refuses_sizes_it_cannot_count_as_a_usage_error(args, message, capsys):
    # an image size the strides cannot divide; an empty vocabulary (it gave a torch traceback)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
