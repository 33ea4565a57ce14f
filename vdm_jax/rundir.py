"""A run directory (`--workdir`): the one object that knows where everything of a run lives.

    WORKDIR/
      config.json                 the run's config (written at every start; the checkpoints
                                  hold their own copy)
      checkpoints/<step>/         orbax checkpoints (vdm_jax.checkpoints)
      metrics.jsonl, tensorboard/ training logs; train.log: the run's log lines
      samples/step_<k>.png        the trainer's sample grids
      samples/<name>.npz          sample batches (+ <name>.json settings, <name>.png grid,
                                  <name>.metrics.json evaluation results, <name>.chunks/ while
                                  being generated)
      eval/                       evaluation results that belong to no sample file (bits/dim)
      eval_results.json           the end-of-run figures
      cache/                      things computed once for this run (the digits classifier)
      .lock                       held (flock) by the process training in this directory

Nothing here touches the file system except `create` and `lock`; paths are `pathlib.Path`s and
`~` is expanded. `PreemptionSignals` turns SIGTERM / Ctrl-C into a request to save the run
and stop at the next step boundary; `sigterm_raises` turns SIGTERM into `Preempted` during work
that has no step boundary and is redone by a rerun (the end-of-run evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Preempted", "PreemptionSignals", "RunDir", "RunDirLockedError", "sigterm_raises"]


class RunDirLockedError(ValueError):
    """Another live process holds the run directory's lock (bad input: exit 2)."""


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (see the module docstring)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().absolute())

    # ---------------------------------------------------------------------------- files
    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_results(self) -> Path:
        return self.root / "eval_results.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def sample_grid(self, step: int) -> Path:
        """The trainer's grid after step `step`."""
        return self.samples / f"step_{step:08d}.png"

    def sample_batch(self, name: str) -> Path:
        """A sample batch `samples/<name>.npz`."""
        return self.samples / f"{name}.npz"

    def bpd_results(self, step: int, ema: str | None) -> Path:
        """Results of a bits/dim-only evaluation of checkpoint `step` with `ema`."""
        return self.eval_dir / f"bpd_step{step:08d}_{ema or 'none'}.json"

    # ------------------------------------------------------------ files beside an .npz batch
    @staticmethod
    def settings_of(npz: str | os.PathLike) -> Path:
        """Settings recorded beside DIR/NAME.npz (sample or reference batch): DIR/NAME.json."""
        return Path(npz).with_suffix(".json")

    @staticmethod
    def results_of(npz: str | os.PathLike) -> Path:
        """Evaluation results of DIR/NAME.npz: DIR/NAME.metrics.json."""
        return Path(npz).with_suffix(".metrics.json")

    @staticmethod
    def grid_of(npz: str | os.PathLike) -> Path:
        """PNG grid of the first samples of DIR/NAME.npz: DIR/NAME.png."""
        return Path(npz).with_suffix(".png")

    @staticmethod
    def chunks_of(npz: str | os.PathLike) -> Path:
        """Chunks of DIR/NAME.npz while it is being generated: DIR/NAME.chunks."""
        return Path(npz).with_suffix(".chunks")

    # ---------------------------------------------------------------------------- state
    def exists(self) -> bool:
        return self.root.exists()

    def has_run(self) -> bool:
        """Whether a run has started here (a config.json or a checkpoints directory)."""
        return self.config_json.is_file() or self.checkpoints.is_dir()

    def check_writable(self) -> None:
        """ValueError naming the problem when the run directory cannot be created or written
        (a regular file in the way, a read-only parent), without creating anything."""
        node = self.root
        while not node.exists():
            if node.parent == node:
                break
            node = node.parent
        if not node.is_dir():
            what = "the workdir" if node == self.root else f"its parent {node}"
            raise ValueError(f"workdir {self.root}: {what} is a file, not a directory; choose "
                             "another --workdir")
        if not os.access(node, os.W_OK | os.X_OK):
            what = "the workdir" if node == self.root else f"its parent {node}"
            raise ValueError(f"workdir {self.root}: {what} is not writable; choose another "
                             "--workdir or fix its permissions")

    def create(self) -> None:
        self.check_writable()
        self.root.mkdir(parents=True, exist_ok=True)

    def _locked_error(self, fd: int) -> RunDirLockedError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        return RunDirLockedError(
            f"workdir {self.root} is in use by another process (pid {holder}): wait for it to "
            "finish or stop it, or use another --workdir")

    def check_unlocked(self) -> None:
        """RunDirLockedError naming the holder's pid when a live process holds the lock. Reads
        only (creates nothing): a trainer calls it before its start-up work, then `lock`."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:  # no lock file (or no run directory): nobody holds it
            return
        try:
            self._flock_or_refuse(fd, fcntl.LOCK_SH)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _flock_or_refuse(self, fd: int, mode: int) -> None:
        """flock(fd, mode) without waiting; RunDirLockedError naming the holder if it is held."""
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise self._locked_error(fd) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run directory (creating it) for the block.

        `fcntl.flock` on `.lock`: released by the kernel when the process dies, so a killed run
        never leaves a stale lock. The holder's pid is written into the file; a second process
        gets RunDirLockedError naming it. Only one process of a multi-host job should lock.
        """
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._flock_or_refuse(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class PreemptionSignals:
    """Once training runs (`armed`), SIGTERM and a first SIGINT request a save-and-stop at the
    next step boundary and a second SIGINT raises KeyboardInterrupt at once (the caller does not
    wait for a save in flight). Before (while preparing data, restoring or compiling: nothing
    new to save), SIGINT raises KeyboardInterrupt at once and SIGTERM requests the stop.
    `announce()`: whether this process says so on stderr (one process of a multi-host job;
    asked when a signal comes, so entering starts nothing, not even the JAX backend)."""

    def __init__(self, announce: Callable[[], bool] = lambda: True) -> None:
        self.announce = announce
        self.requested: str | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (tests running train in a thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and (self.requested == "SIGINT" or not self.armed):
            raise KeyboardInterrupt  # abort now
        if self.requested is None:
            name = signal.Signals(signum).name
            again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
            if self.announce():  # os.write: no lock a signal handler could deadlock on
                os.write(sys.stderr.fileno(), f"\n{name}: finishing the current step, saving it "
                         f"and stopping{again} …\n".encode())
            self.requested = name
        elif signum == signal.SIGINT:
            self.requested = "SIGINT"  # after SIGTERM, a Ctrl-C still may abort

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Preempted(Exception):
    """SIGTERM arrived inside `sigterm_raises()`."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Preempted` in the block (the main thread's; a no-op in another thread):
    the caller saves nothing midway, says so and exits 0, and a rerun redoes the work."""

    def handle(signum: int, frame: Any) -> None:
        raise Preempted(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread (tests running train in a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
