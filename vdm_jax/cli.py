"""Command-line error handling shared by the launch scripts.

Bad input (a missing file, a malformed `.npz`, an unknown option value, a workdir in use) is
reported as one line `error: <message>` on stderr with exit status 2 and no traceback: library
code raises ValueError or FileNotFoundError with a message naming the problem and the fix, and the
script runs inside `exit_on_bad_input()`. Anything else is a bug and keeps its traceback. Set
VDM_JAX_TRACEBACK=1 to get the traceback of bad-input errors too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

__all__ = ["BAD_INPUT_ERRORS", "BAD_INPUT_EXIT_CODE", "ConfigArgs", "exit_on_bad_input", "fail",
           "parse_override_args", "quiet_third_party_logs"]

BAD_INPUT_EXIT_CODE = 2
# DatasetNotFoundError (missing data) is a FileNotFoundError, so it is covered too.
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError)


def fail(message: str, status: int = BAD_INPUT_EXIT_CODE) -> NoReturn:
    """Print `error: <message>` (one paragraph) on stderr and exit with `status`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Turns ValueError / FileNotFoundError into `error: <message>` on stderr and exit 2."""
    try:
        yield
    except BAD_INPUT_ERRORS as e:
        if os.environ.get("VDM_JAX_TRACEBACK"):
            raise
        fail(" ".join(str(e).split()) or type(e).__name__)


def quiet_third_party_logs() -> None:
    """Silence what misleads a user: tfds's "Downloading and preparing dataset" (nothing is
    downloaded: vdm_jax prepares local files) and "Using custom data configuration", orbax's
    per-file INFO lines, absl's INFO chatter. Warnings and errors still show."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("tensorflow_datasets", "orbax", "absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    """The `--config=PATH` and `--config.<key>=<value>` arguments of a launch script, split off
    the command line before absl parses the rest (absl would refuse the dotted flags).

        CONFIG = ConfigArgs(USAGE)
        app.run(main, flags_parser=CONFIG.parse)     # then CONFIG.path, CONFIG.overrides
    """

    usage: str
    path: str | None = None
    overrides: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def parse(self, argv: list[str]) -> list[str]:
        from absl import flags

        with exit_on_bad_input():
            self.path, self.overrides, rest = parse_override_args(argv[1:])
            try:
                return flags.FLAGS([argv[0], *rest])
            except flags.Error as e:
                raise ValueError(f"{e}. Usage: {self.usage}") from None


