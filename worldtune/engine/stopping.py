"""Stopping a run from outside and picking it up again: Ctrl-C handling and the resume command."""
import signal
import threading
import time


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
