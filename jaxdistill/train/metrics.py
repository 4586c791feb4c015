"""Metrics out: TensorBoard event files + JSONL per stage, and one console line per stage.

The directory may be local or a bucket (``gs://``, through etils.epath): object stores
cannot append, so there a file is kept in memory and uploaded whole, at most every
`RemoteFile.every` seconds and when the stage ends.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any, TextIO

from jaxdistill.runtime import paths


class RemoteFile:
    """An append-only file in a bucket: buffered, uploaded whole on `flush`."""

    every = 30.0  # seconds between uploads; `close` always uploads

    def __init__(self, path: str, keep_existing: bool = False):
        self.path = paths.Path(path)
        self.buffer = io.BytesIO()
        if keep_existing and self.path.exists():  # a resumed stage continues the file
            self.buffer.write(self.path.read_bytes())
        self._uploaded = 0.0

    def write(self, data: bytes | str) -> None:
        self.buffer.write(data.encode() if isinstance(data, str) else data)

    def flush(self, force: bool = False) -> None:
        if force or time.monotonic() - self._uploaded >= self.every:
            self.path.write_bytes(self.buffer.getvalue())
            self._uploaded = time.monotonic()

    def close(self) -> None:
        self.flush(force=True)


class _RemoteEvents:
    """tensorboardX writer factory for buckets, through epath (gcsfs) rather than
    tensorboardX's own google-cloud-storage client."""

    def open(self, path: str) -> RemoteFile:
        # Event files are named by the second and host: a writer reopened within the same
        # second continues the file (records append) instead of replacing it.
        return RemoteFile(path, keep_existing=True)

    def directory_check(self, path: str) -> None:
        del path  # buckets have no directories to create


def _register_remote_events() -> None:
    from tensorboardX import record_writer

    for scheme in ('gs', 's3'):
        record_writer.register_writer_factory(scheme, _RemoteEvents())


class MetricWriter:
    """Writes namespaced scalars to ``DIR/events`` (TensorBoard) and ``DIR/metrics.jsonl``,
    and to Weights & Biases when ``wandb`` (`WandbRun` arguments) is given.

    ``hparams`` (the resolved config, flattened) is written once per writer as
    TensorBoard's hyper-parameters of the run, and as the W&B run's config.
    """

    def __init__(self, directory: str, enabled: bool = True, hparams: dict | None = None,
                 wandb: dict[str, str] | None = None):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        self._wandb = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        paths.makedirs(directory)
        if paths.is_remote(directory):
            _register_remote_events()
            self._jsonl = RemoteFile(paths.join(directory, 'metrics.jsonl'), keep_existing=True)
        else:
            self._jsonl = open(paths.join(directory, 'metrics.jsonl'), 'a')
        self._tb = SummaryWriter(paths.join(directory, 'events'))
        flat = flatten(hparams or {})
        if flat:
            _write_hparams(self._tb, flat)
        if wandb:
            self._wandb = WandbRun(config=flat, **wandb)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({'step': step, **clean}) + '\n')
        self._jsonl.flush()
        if self._wandb:
            self._wandb.log(step, clean)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            if self._wandb:
                self._wandb.close()


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists and tuples become their JSON text."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _write_hparams(tb, flat: dict[str, Any]) -> None:
    """TensorBoard's HParams plugin entry in this run's own event file (tensorboardX's
    ``add_hparams`` would start a separate run directory)."""
    from tensorboardX.summary import hparams

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in flat.items()}
    writer = tb._get_file_writer()
    for summary in hparams(values, {'loss': 0.0}):
        writer.add_summary(summary)


class WandbRun:
    """One stage's Weights & Biases run (``train.wandb_project``; the ``wandb`` extra).

    The run id is a function of the workdir and stage, so a resumed stage continues its
    own W&B run instead of starting another.
    """

    def __init__(self, project: str, name: str, group: str, run_id: str,
                 config: dict[str, Any] | None = None):
        import wandb

        self._run = wandb.init(project=project, name=name, group=group, id=run_id,
                               resume='allow', config=config or {}, reinit=True)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


def wandb_args(project: str, workdir: str, stage: str) -> dict[str, str] | None:
    """What `MetricWriter` needs for a stage's W&B run (None when the project is '')."""
    if not project:
        return None
    import hashlib

    group = workdir.rstrip('/').rsplit('/', 1)[-1]
    run_id = hashlib.sha256(f'{workdir}:{stage}'.encode()).hexdigest()[:16]
    return {'project': project, 'name': f'{group}/{stage}', 'group': group, 'run_id': run_id}


def fmt_time(seconds: float) -> str:
    """``h:mm:ss`` (a 20-hour stage reads 20:00:00, not 1200:00)."""
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
    """The console line of a stage, at every log step: rewritten in place on a terminal;
    without one (SLURM, nohup, log files) one line per log step, so a long stage is
    never silent. The last line carries the stage's summary."""

    def __init__(self, stage: str, total: int, start: int = 0, stream: TextIO | None = None,
                 enabled: bool = True):
        self.stage, self.total, self.start = stage, total, start
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.line = ''
        self._pending = False  # a line not printed yet (without a terminal)

    def steps_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, loss: float, extra: str = '') -> None:
        if not self.enabled:
            return
        rate = self.steps_per_second(step)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        self.line = (f'{self.stage:<9} step {step:>6}/{self.total}  loss {loss:.4f}  '
                     f'{rate:7.1f} steps/s  ETA {fmt_time(eta)}{extra}')
        if self.tty:
            self.stream.write('\r' + self.line + '\033[K')
        elif step < self.total:
            self.stream.write(self.line + '\n')
        self._pending = not self.tty and step >= self.total
        self.stream.flush()

    def done(self, summary: str = '') -> None:
        if not self.enabled:
            return
        line = self.line + (f'  {summary}' if summary else '')
        if self.tty:
            self.stream.write('\r' + line + '\033[K\n')
        elif self._pending or summary:
            self.stream.write(line + '\n')
        self.stream.flush()
