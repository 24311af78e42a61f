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
