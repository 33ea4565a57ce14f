"""What a training run tells its user: TensorBoard event files, `metrics.jsonl`, and `train.log`.

Only process 0 writes. `MetricWriter` holds the TensorBoard writer and the JSON-lines file;
`RunLog` prints a message to stderr (above the progress bar) and appends it, time-stamped, to
the run directory's `train.log`, so what the user saw stays with the run. Closing never masks
the error that ended a run: a failure while closing (a full disk, say) is logged, not raised,
when another exception is already propagating.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from vdm_jax.io import write_text

__all__ = ["MetricWriter", "RunLog"]

log = logging.getLogger(__name__)


class RunLog:
    """Messages for the user: stderr (tqdm-safe) and `path` (appended), on process 0 only. Made
    with `path=None`, it holds the messages back (time-stamped) until `open(path)` writes them:
    what a run says before its run directory may be written (compiling) still reaches the log."""

    def __init__(self, path: Path | None, active: bool):
        self.active = active
        self._file: IO[str] | None = None
        self._held: list[str] = []
        if path is not None:
            self.open(path)

    def open(self, path: Path) -> None:
        """Start appending to `path`, with the messages said before first."""
        if self.active and self._file is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a")  # closed in close()
            self._file.writelines(self._held)
            self._file.flush()
        self._held = []

    def __call__(self, message: str) -> None:
        if not self.active:
            return
        tqdm.write(message, file=sys.stderr)
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}\n"
        if self._file is None:
            self._held.append(line)
        else:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class MetricWriter:
    """TensorBoard event files + JSON lines in the run directory; a no-op on other processes."""

    def __init__(self, tensorboard_dir: Path, jsonl_path: Path, active: bool,
                 start_step: int | None = None):
        """`start_step`: the step the run resumes from. The rows a killed run logged after it
        (and a half-written last line) are dropped from the JSON lines, and TensorBoard is told
        to discard its events from step start_step + 1 on: the replayed steps, logged again,
        appear once."""
        self.active = active
        if not active:
            return
        from tensorboardX import SummaryWriter

        if start_step is not None and jsonl_path.is_file():
            kept = []
            for line in jsonl_path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by a kill
            write_text(jsonl_path, "".join(kept))
        purge = None if start_step is None else start_step + 1
        self.tb = SummaryWriter(str(tensorboard_dir), purge_step=purge)
        self.jsonl = open(jsonl_path, "a")  # closed in close()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 (H, W, C) image (the sample grid, upscaled like its PNG)."""
        if self.active:
            self.tb.add_image(name, image, step, dataformats="HWC")

    def close(self, quiet: bool = False) -> None:
        """Close the files; `quiet`: log (at INFO) instead of raising, because another error is
        on its way, typically the same full disk, which the caller reports."""
        if not self.active:
            return
        self.active = False
        for closer in (self.tb.close, self.jsonl.close):
            try:
                closer()
            except Exception as e:  # e.g. ENOSPC while flushing
                if not quiet:
                    raise
                log.info("while closing the training logs: %s", e)
