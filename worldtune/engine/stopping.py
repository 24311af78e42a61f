"""Stopping a run and picking it up again: Ctrl-C handling, the resume command, and what a run stopped
by an error or a checkpoint it could not write says is safe."""
import signal
import threading
import time
from pathlib import Path

from worldtune.outputs import OutputWriteError, remedy


# SIGTERM is how torchrun passes on its own SIGTERM, and how SLURM, Kubernetes, `docker stop` and
# `timeout` ask a program to end: without a handler it kills at once, and the run loses what it
# trained since its last save.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Set by the first Ctrl-C (SIGINT) or SIGTERM: the loop finishes the current step, saves and returns.

    A second one (2 s or more after the first) raises KeyboardInterrupt at once; `last.pt` is
    then written only if no weight update or validation was under way (else the previous one,
    written atomically, stays). While `immediate` is set (during a validation, which a resume
    repeats from the `last.pt` saved before it), the first one raises at once.
    """

    def __init__(self, announce: bool = True):
        self.announce = announce  # False on DDP ranks other than 0: one message, not one per process
        self.requested = False
        self.immediate = False
        self._first = 0.0
        self._previous = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            # torchrun forwards the terminal's Ctrl-C to ranks that already got it: not a second press
            if now - self._first < 2.0:
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, now
        if self.immediate:
            raise KeyboardInterrupt
        if self.announce:
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            print(f"\n{name}: finishing this step, saving last.pt and stopping (press Ctrl-C again to abort)",
                  flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False


def resume_hint(out, world_size: int, local_world_size: int | None = None, device: str = "auto") -> str:
    """The command that continues the run in `out` as it runs now: the same processes per machine
    (and machines, whose rendezvous options the user adds) and the same `--device` unless auto."""
    local = local_world_size or world_size
    nodes = f"--nnodes {world_size // local} ... " if world_size > local else ""
    launcher = f"torchrun {nodes}--nproc_per_node {local} -m worldtune" if world_size > 1 else "worldtune"
    where = f" --device {device}" if device not in ("", "auto") else ""
    return f"{launcher} train --resume {out}{where}"


def stopped_note(out: Path, state: dict, resume_command: str, saved_now: bool = False) -> str:
    """One line for a run stopped by an error (out of memory, bad data, a failing validation): where
    it stopped and the checkpoint it goes on from (`saved_now`: last.pt was just written, at the
    last completed step)."""
    if state.get("validating"):
        where = f"the validation after epoch {state['epoch']}"
        kept = "its latest checkpoint, saved before this validation, which a resume runs again"
    else:
        where = f"training at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}"
        kept = "saved at that step (a resume runs the failed step again)" if saved_now else "its latest checkpoint"
    last = out / "last.pt"
    if not last.is_file():
        return f"worldtune train: {where} stopped with the error below, before any checkpoint was written"
    return f"worldtune train: {where} stopped with the error below; {last} is {kept}; continue with: {resume_command}"


def checkpoint_write_failure(err: OutputWriteError, resume_command: str) -> OutputWriteError:
    """The run's message for a checkpoint it could not write (`err`, from save_checkpoint_atomic):
    the file and the cause, what is still safe, and how to go on. One line."""
    path = err.path
    if path.name == "last.pt" or not (path.parent / "last.pt").is_file():
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
    elif path.name == "best.pt":  # saved in a validation, which the last.pt saved before it repeats on resume
        kept = (f"{'the previous best.pt is intact' if path.is_file() else 'no best.pt was written'}, and "
                f"last.pt, saved before this validation, runs it again on resume")
    else:  # epoch_N.pt, written after last.pt: the same state
        kept = f"{path.parent / 'last.pt'} holds the same state (copy it to {path.name})"
    then = (f"continue with: {resume_command}" if (path.parent / "last.pt").is_file()
            else "start the run again")
    return OutputWriteError(f"{err}; {kept}; {remedy(err, path.parent)}, then {then}", path, err)
