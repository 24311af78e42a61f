"""The `worldtune` command line: one sub-module per sub-command.

Each sub-command module defines `add_arguments(parser)` and `run(args) -> int`.
Modules are imported lazily so `worldtune --help` stays fast.
"""
import argparse
import importlib
import importlib.util
import io
import os
import sys
import warnings

# name -> (module, one-line help). Commands whose module is absent are not offered.
COMMANDS = {
    "demo": ("worldtune.cli.demo", "short fine-tune + eval on a built-in dataset (no network)"),
    "train": ("worldtune.cli.train", "fine-tune with a published recipe"),
    "eval": ("worldtune.cli.eval", "COCO box AP of a checkpoint or of a detections file"),
    "predict": ("worldtune.cli.predict", "detect any vocabulary in images"),
    "export": ("worldtune.cli.export", "export to ONNX with the vocabulary folded in"),
    "slim": ("worldtune.cli.slim", "write a checkpoint's inference weights alone (safetensors) for shipping"),
    "models": ("worldtune.cli.models", "list model variants with parameters and GFLOPs"),
    "zoo": ("worldtune.cli.zoo", "list the published checkpoints and the local cache"),
    "show-data": ("worldtune.cli.show_data", "write a grid of augmented training samples"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example lines of a command's description as written, and shows the defaults that
    say something (not None or False, and not where the help text already names its default)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == [] \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def available_commands() -> dict:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0])}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldtune",
        description="Fine-tune, evaluate and ship YOLO-World-v2 open-vocabulary detectors.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in available_commands().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def warning_printer(main_pid: int):
    """`warnings.showwarning` that puts each warning on a line of its own, not after the text of a
    progress bar: above the bars in the main process, on a new line in a DataLoader worker (which
    cannot move the main process's bars)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if file is not None:
            file.write(text)
        elif os.getpid() == main_pid:
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=sys.stderr)
        else:
            sys.stderr.write("\n" + text)
    return show


def unknown_option_hint(command: str, options: list[str], unknown: list[str]) -> str:
    """' (did you mean ...?)' for mistyped options of `command`: the nearest of its `options`, and for
    `train` a config key `--set` takes (--lr -> --set train.lr=...). Empty when nothing is close."""
    import difflib

    guesses = []
    for item in unknown:
        if not item.startswith("--"):
            continue
        flag = item.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.75)
        if not close and command == "train":
            from worldtune.config import close_keys, valid_keys

            close = [f"--set {key}=..." for key in close_keys(flag[2:].replace("-", "_"), valid_keys())[:1]]
        guesses += [f"{g} for {flag}" for g in close]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, with its usage line and a guess, not by the top-level one
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        command = sub.choices.get(args.command, parser)
        options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        command.error(f"unrecognized arguments: {' '.join(unknown)}"
                      + unknown_option_hint(args.command, options, unknown))
    if args.command is None:
        parser.print_help()
        return 0
    from worldtune.cli.errors import debug, out_of_memory, report, report_out_of_memory, user_errors

    library_format, library_show = warnings.formatwarning, warnings.showwarning
    if not debug():  # "warning: ..." for a user, not the library's file, line and source line
        warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    warnings.showwarning = warning_printer(os.getpid())
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `worldtune zoo | head`: the reader has gone, which is no error of ours
        try:  # else Python reports the pipe again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
    except user_errors() as e:  # what a command did not catch itself: still one line, not a traceback
        return report(args.command, e)
    except (RuntimeError, MemoryError) as e:  # any other is a bug: its traceback is kept
        if not out_of_memory(e):
            raise
        return report_out_of_memory(args.command, e)
    except KeyboardInterrupt:  # Ctrl-C in a command without its own handling (train saves first)
        if debug():
            raise
        print(f"worldtune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning, warnings.showwarning = library_format, library_show


if __name__ == "__main__":
    sys.exit(main())
