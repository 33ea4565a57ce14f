"""Command-line error handling shared by the launch scripts.

Bad input (a missing file, a malformed `.npz`, an unknown option value) is reported as one line
`error: <message>` on stderr with exit status 2 and no traceback: library code raises ValueError
or FileNotFoundError with a message naming the problem and the fix, and the script's entry point
runs inside `exit_on_bad_input()`. Anything else is a bug and keeps its traceback. Set
VDM_JAX_TRACEBACK=1 to get the traceback of bad-input errors too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["BAD_INPUT_ERRORS", "BAD_INPUT_EXIT_CODE", "exit_on_bad_input"]

BAD_INPUT_EXIT_CODE = 2
# DatasetNotFoundError (missing data) is a FileNotFoundError, so it is covered too.
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError)


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Turns ValueError / FileNotFoundError into `error: <message>` on stderr and exit 2."""
    try:
        yield
    except BAD_INPUT_ERRORS as e:
        if os.environ.get("VDM_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(BAD_INPUT_EXIT_CODE) from None
