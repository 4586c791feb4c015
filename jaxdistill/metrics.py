"""Metrics out: TensorBoard event files + JSONL per stage, and one console line per stage."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO


class MetricWriter:
    """Writes namespaced scalars to ``DIR/events`` (TensorBoard) and ``DIR/metrics.jsonl``."""

    def __init__(self, directory: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(directory, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(directory, 'events'))
            self._jsonl = open(os.path.join(directory, 'metrics.jsonl'), 'a')

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({'step': step, **clean}) + '\n')
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f'{seconds // 60}:{seconds % 60:02d}'


class Progress:
    """One line per stage: rewritten in place on a terminal, printed once at the end otherwise."""

    def __init__(self, stage: str, total: int, start: int = 0, stream: TextIO | None = None,
                 enabled: bool = True):
        self.stage, self.total, self.start = stage, total, start
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.line = ''

    def steps_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, loss: float, extra: str = '') -> None:
        rate = self.steps_per_second(step)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        self.line = (f'{self.stage:<9} step {step:>6}/{self.total}  loss {loss:.4f}  '
                     f'{rate:7.1f} steps/s  ETA {_fmt_time(eta)}{extra}')
        if self.tty:
            self.stream.write('\r' + self.line + '\033[K')
            self.stream.flush()

    def done(self, summary: str = '') -> None:
        if not self.enabled:
            return
        line = self.line + (f'  {summary}' if summary else '')
        self.stream.write(('\r' + line + '\033[K' if self.tty else line) + '\n')
        self.stream.flush()
