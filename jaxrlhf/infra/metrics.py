"""Metrics to `metrics.jsonl` and TensorBoard event files; only process 0 writes.

Both are written from the calling thread (tensorboardX's `SummaryWriter` writes from a thread of its own,
which dies with a traceback on a full disk and then blocks the trainer on its full queue), so a failed write
is one `OSError` naming the file and the cause, raised where the metrics were written.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

_TB_FLUSH_SECONDS = 5.0  # each flush fsyncs: at most this often, and at close


def _plain(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else None if math.isnan(value) else value


def _write_error(path: Path, e: OSError) -> OSError:
    err = OSError(f"cannot write metrics to {path}: {e.strerror or e}")
    err.errno = e.errno
    return err


class _EventFile:
    """A TensorBoard event file written synchronously (one per writer, named as tensorboardX names them)."""

    def __init__(self, logdir: Path):
        from tensorboardX.event_file_writer import EventsWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(logdir / "events"), f".{os.getpid()}")
        self.path = Path(self._writer._file_name)
        self._flushed = time.time()

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        summary = Summary(value=[value for k, v in scalars.items() for value in scalar(k, v).value])
        self._writer.write_event(Event(summary=summary, step=int(step), wall_time=time.time()))
        if time.time() - self._flushed > _TB_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self._writer.flush()
        self._flushed = time.time()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self.workdir = Path(workdir)
        self._jsonl_path = self.workdir / "metrics.jsonl"
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self._jsonl_path, "a")
        except OSError as e:
            raise _write_error(self._jsonl_path, e) from None
        if tensorboard:
            try:
                self._tb = _EventFile(self.workdir / "tensorboard")
            except OSError as e:
                raise _write_error(self.workdir / "tensorboard", e) from None

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({prefix + k: _plain(v) for k, v in metrics.items()})
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as e:
            raise _write_error(self._jsonl_path, e) from None
        if self._tb is not None:
            scalars = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, (int, float))}
            try:
                self._tb.add_scalars(scalars, step)
            except OSError as e:
                raise _write_error(self._tb.path, e) from None

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self._jsonl.close()
        except OSError as e:
            raise _write_error(self._jsonl_path, e) from None
        finally:
            if self._tb is not None:
                tb, self._tb = self._tb, None
                try:
                    tb.close()
                except OSError as e:
                    raise _write_error(tb.path, e) from None
