"""What every command prints for warnings: one line, not the library's file and source line."""
import warnings

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
