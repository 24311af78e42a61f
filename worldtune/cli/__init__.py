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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
