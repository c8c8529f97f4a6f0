"""Terminal progress for long runs: a redrawn status line on a TTY, quiet otherwise.

On a terminal the line is redrawn at most ``hz`` times a second; when stderr
is not a terminal (batch jobs, CI) only :meth:`Progress.log` lines are printed,
one per evaluation, so logs stay short.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_steps: int | None, *, enabled: bool | None = None, stream=None, hz: float = 4.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if enabled is None else enabled
        self.total = total_steps
        self.period = 1.0 / hz
        self._last = 0.0
        self._drawn = False

    def update(self, step: int, text: str) -> None:
        """Redraw the status line (TTY only, rate-limited)."""
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < self.period:
            return
        self._last = now
        if self.total:
            frac = min(step / self.total, 1.0)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            head = f"[{bar}] {100 * frac:5.1f}% step {step}/{self.total}"
        else:
            head = f"step {step}"
        self.stream.write(f"\r\x1b[K{head}  {text}")
        self.stream.flush()
        self._drawn = True

    def log(self, text: str) -> None:
        """A permanent line (evaluations, events)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def print_summary(s: dict) -> None:
    """The last lines of a run: why it stopped, accuracy, throughput, where its files are."""
    print(f"done: {s['stopped_because']}; test accuracy {100 * s['final_test_accuracy']:.2f}% "
          f"(best {100 * s['best_test_accuracy']:.2f}%), {s['examples_seen']} examples in {s['wall_seconds']:.1f} s "
          f"({s['examples_per_second']:,.0f} examples/s)")
    print(f"summary: {s['run_dir']}/summary.json")
    print(f"plot:    {s['plot']}")
