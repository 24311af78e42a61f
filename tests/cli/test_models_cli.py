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


def test_models_refuses_an_image_size_the_strides_cannot_divide(capsys):
    assert main(["models", "--imgsz", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().out
