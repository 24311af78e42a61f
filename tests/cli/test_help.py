"""Every command's --help: each option says what it does, and what it defaults to."""
import argparse

from worldtune.cli import build_parser


def _subparsers() -> dict:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_has_help_and_its_default_is_shown():
    missing_help, missing_default = [], []
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing_help.append(flag)
                continue
            text = formatter._get_help_string(action)  # with "(default: ...)" added where the formatter adds it
            if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
                missing_default.append(f"{flag} ({action.help!r})")
    assert not missing_help, f"options without help text: {missing_help}"
    assert not missing_default, f"options whose default --help does not show: {missing_default}"


def _help_text(parser, dest: str) -> str:
    (action,) = [a for a in parser._actions if a.dest == dest]
    return " ".join(parser._get_formatter()._expand_help(action).split())  # as --help prints it


def test_shared_options_say_the_same_in_every_command():
    """--device takes the same values everywhere (eval's help once left 'auto' out), and every
    --class-texts says that only a .json file is read as JSON."""
    devices, class_texts = {}, {}
    for name, parser in _subparsers().items():
        dests = {a.dest for a in parser._actions}
        if "device" in dests:
            devices[name] = _help_text(parser, "device")
        if "class_texts" in dests:
            class_texts[name] = _help_text(parser, "class_texts")
    assert set(devices) == {"demo", "train", "eval", "predict"}
    for name, text in devices.items():
        assert text == "auto (cuda when available, else cpu), cpu, cuda or cuda:N (default: auto)", name
    assert set(class_texts) == {"train", "eval", "predict", "export", "show-data"}
    for name, text in class_texts.items():
        assert text.startswith("JSON list of synonym lists") and "text file (not .json)" in text, name
