"""Command-line error handling shared by the launch scripts.

Bad input (a missing file, a malformed `.npz`, an unknown option value, a workdir in use) is
reported as one line `error: <message>` on stderr with exit status 2 and no traceback: library
code raises ValueError or FileNotFoundError with a message naming the problem and the fix, and the
script runs inside `exit_on_bad_input()`. Anything else is a bug and keeps its traceback. Set
VDM_JAX_TRACEBACK=1 to get the traceback of bad-input errors too.

Every launch script runs through `launch` (the one bad-input path): `--help` prints the script's
documentation, its flags and (for scripts with a config) `--config` / `--config.<key>`, exit 0;
a bad flag, a stray argument or bad input is one `error:` line, exit 2. Scripts check their output
paths first (`vdm_jax.io.check_writable`), before any long computation.

    CONFIG = ConfigArgs(USAGE)           # or ConfigArgs(USAGE, takes_config=False)
    if __name__ == "__main__":
        launch(main, CONFIG, __doc__)    # main() reads its flags; CONFIG.path, CONFIG.overrides
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

__all__ = ["BAD_INPUT_ERRORS", "BAD_INPUT_EXIT_CODE", "ConfigArgs", "MissingDependencyError",
           "exit_on_bad_input", "fail", "fail_now", "launch", "parse_override_args",
           "quiet_third_party_logs"]

BAD_INPUT_EXIT_CODE = 2


class MissingDependencyError(ImportError):
    """An optional library this request needs (torch, to read a `.pth`) is not installed; the
    message names it and the way around it. Bad input, not a bug: one line, exit 2."""


# DatasetNotFoundError (missing data) is a FileNotFoundError, so it is covered too.
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, MissingDependencyError)
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def fail(message: str, status: int = BAD_INPUT_EXIT_CODE) -> NoReturn:
    """Print `error: <message>` (one paragraph) on stderr and exit with `status`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def fail_now(message: str, status: int) -> NoReturn:
    """`fail`, without waiting for other threads or running exit handlers: for a run that cannot
    go on while background writers (orbax's) still hold threads that would only report the same
    failure again, or for an abort the user asked to be immediate (a second Ctrl-C)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Turns ValueError / FileNotFoundError into `error: <message>` on stderr and exit 2."""
    try:
        yield
    except BAD_INPUT_ERRORS as e:
        if os.environ.get("VDM_JAX_TRACEBACK"):
            raise
        fail(" ".join(str(e).split()) or type(e).__name__)


# Texts of the OS errors a trainer reports itself as one line (vdm_jax.training.loop's
# DiskFullError, which knows them by errno too); third-party reports of the same failure only
# repeat it, with pages of traceback.
STORAGE_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


# Third-party warnings that say nothing to a user of these scripts: orbax re-registering its
# handler for jax.Array at import, tfds noting that OpenCV (which nothing here uses) is absent.
NOISE_TEXTS = ("Type handler registry type", "OpenCV is not installed")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(t in text for t in NOISE_TEXTS)


class _DropRepeatedStorageErrors(logging.Filter):
    """Drops orbax's and asyncio's own reports (log records with tracebacks) of a write refused
    for lack of room: the trainer reports that failure once, naming the disk and the step."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "vdm_jax" in record.pathname:
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        return not any(t in text for t in STORAGE_FULL_TEXTS)


def _drop_closed_loop_reports(default: Callable[[Any], None]) -> Callable[[Any], None]:
    """A sys.unraisablehook without the `RuntimeError: Event loop is closed` reports of
    TensorStore futures that complete after orbax closed the event loop that awaited them (after
    a failed read or write, which is reported on its own); everything else goes to `default`."""

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            default(unraisable)

    hook.drops_closed_loop_reports = True  # type: ignore[attr-defined]
    return hook


def quiet_third_party_logs() -> None:
    """Silence what misleads a user: orbax's per-file INFO lines, absl's INFO chatter, the
    warnings of NOISE_TEXTS, and the
    repeated reports of a failure the scripts report as one line (`_DropRepeatedStorageErrors`,
    `_drop_closed_loop_reports`). tfds's "Downloading and preparing dataset" is silenced where
    vdm_jax prepares data (vdm_jax.data.tfds_utils). Warnings and errors still show."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("tensorflow_datasets", "orbax", "absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("absl", "asyncio", "orbax"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRepeatedStorageErrors) for f in logger.filters):
            logger.addFilter(_DropRepeatedStorageErrors())
    for name in ("absl", "orbax", "tensorflow_datasets"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    if not getattr(sys.unraisablehook, "drops_closed_loop_reports", False):
        sys.unraisablehook = _drop_closed_loop_reports(sys.unraisablehook)


def parse_override_args(argv: Sequence[str]
                        ) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Split a command line into (--config path, [(key, value) of --config.<key>=<value>], the
    remaining arguments). A `--config.<key>` without '=' is True (a bool flag)."""
    path, overrides, rest = None, [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in ("--config", "-config"):
            path = value if eq else None
            if not eq:
                raise ValueError("--config needs a value: --config=configs/<name>.py")
        elif name.startswith(("--config.", "-config.")):
            overrides.append((name.split(".", 1)[1], value if eq else "true"))
        else:
            rest.append(arg)
    return path, overrides, rest


@dataclasses.dataclass
class ConfigArgs:
    """A launch script's command line: its usage line and, when `takes_config`, the
    `--config=PATH` and `--config.<key>=<value>` arguments, split off before absl parses the
    rest (absl would refuse the dotted flags). `parse` is the absl flags parser `launch` uses."""

    usage: str
    takes_config: bool = True
    doc: str = ""
    path: str | None = None
    overrides: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def help_text(self) -> str:
        """The script's documentation, usage and flags (what `--help` prints)."""
        from absl import flags

        parts = [self.doc.strip(), f"Usage: {self.usage}"]
        if self.takes_config:
            parts.append("Config flags:\n  --config: the config file, e.g. configs/digits_dit.py\n"
                         "  --config.<section>.<key>=<value>: override one config field (see the "
                         "config file and vdm_jax/config/schema.py)")
        own = flags.FLAGS.main_module_help()
        if own:
            parts.append(own)
        return "\n\n".join(p for p in parts if p)

    def parse(self, argv: list[str]) -> list[str]:
        from absl import flags

        if any(arg in HELP_FLAGS for arg in argv[1:]):
            print(self.help_text())
            raise SystemExit(0)
        with exit_on_bad_input():
            self.path, self.overrides, rest = parse_override_args(argv[1:])
            if not self.takes_config and (self.path or self.overrides):
                raise ValueError(f"this script takes no --config. Usage: {self.usage}")
            try:
                unparsed = flags.FLAGS([argv[0], *rest])
            except flags.Error as e:
                raise ValueError(f"{e}. Usage: {self.usage}") from None
            if len(unparsed) > 1:
                raise ValueError(f"unexpected arguments {unparsed[1:]}; flags are --name=value. "
                                 f"Usage: {self.usage}")
            return unparsed


def launch(main: Callable[[], None], args: ConfigArgs, doc: str | None = None,
           before: Callable[[], None] | None = None) -> NoReturn:
    """Run a launch script the one way every script runs: `before()` (host set-up that must
    precede JAX), absl's flag parsing by `args.parse` (`--help`: exit 0), then `main()` with the
    third-party logs quieted, bad input turned into one `error:` line and exit status 2."""
    from absl import app

    if doc is not None:
        args.doc = doc
    with exit_on_bad_input():
        if before is not None:
            before()

    def run(argv: list[str]) -> None:
        quiet_third_party_logs()
        with exit_on_bad_input():
            main()

    app.run(run, flags_parser=args.parse)
    raise SystemExit(0)  # app.run exits itself; for the type checker
