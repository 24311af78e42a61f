"""What every command prints for warnings: one line, not the library's file and source line."""
import warnings

import worldtune.cli.zoo as zoo_cli
from worldtune.cli import main


def test_warnings_print_as_one_line_and_the_library_format_is_restored(capsys, monkeypatch):
    def run(args):
        warnings.warn("the image cache is cut short", UserWarning)
        return 0

    monkeypatch.setattr(zoo_cli, "run", run)
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    before = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["zoo"]) == 0
    assert capsys.readouterr().err == "warning: the image cache is cut short\n"
    assert warnings.formatwarning is before
