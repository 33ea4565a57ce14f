"""Publishing files atomically: the one way vdm_jax writes a file that others read.

`atomic_write(path, write)` calls write(f) on a temporary file with a unique name in the target
directory (so the final rename never crosses a file system and two writers never share it),
flushes and fsyncs it, renames it over `path` (atomic on POSIX), and fsyncs the directory so the
rename survives a crash. A reader therefore sees the old file or the new one, never a part of
either; of two concurrent writers of one path, the last rename wins whole. A failed write removes
its temporary file and leaves `path` as it was.

Temporary names are `.<name>.<random>.tmp` (hidden, and ignored by readers of the directory);
`remove_stale_temporaries` deletes those a killed writer left behind.

A write refused for lack of room (ENOSPC, EDQUOT, or EFBIG: a file-size limit) is diagnosed by
`disk_full_error`: one line naming the disk, the path, the free space and what a rerun does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "check_writable",
    "json_default",
    "publish",
    "read_json",
    "read_json_object",
    "remove_stale_temporaries",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
]

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def publish(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory for a writer that needs a file name (e.g. an
    ArrayRecordWriter); when the block ends normally the file is fsynced and renamed over
    `path`, else removed. The atomicity of `atomic_write`, for path-based writers."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Publish the bytes `write(f)` puts into a binary file object at `path`, atomically (module
    docstring). Creates the parent directory. Returns the path."""
    path = Path(path).expanduser()
    with publish(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def json_default(obj: Any) -> Any:
    """JSON for NumPy scalars/arrays, paths and ConfigDicts (everything the project records)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """`obj` as JSON (keys sorted, NumPy values converted), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=json_default, allow_nan=True)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON value in `path`, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object (a dict) in `path`, a file given as input; ValueError naming `what`
    (e.g. "settings file") and the path when it is unreadable, not JSON or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{what} {path} is not readable JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} holds a JSON {type(obj).__name__}, expected an object")
    return obj


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """An uncompressed `.npz` of `arrays`, atomically (np.savez into the temporary file)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of killed writers (`.<name>.<random>.tmp`) in `directory`;
    returns what was removed. Call only where no other writer can be active (e.g. under the run
    directory's lock)."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


class DiskFullError(OSError):
    """A checkpoint or log could not be written for lack of room (ENOSPC, EDQUOT, or EFBIG: a
    file-size limit); the message names the disk, the path, the step and the free space."""


def _mount_point(path: Path) -> Path:
    node = path.absolute()
    while not node.exists() and node.parent != node:
        node = node.parent
    while not os.path.ismount(node) and node.parent != node:
        node = node.parent
    return node


def storage_errno(error: BaseException) -> int | None:
    """ENOSPC / EDQUOT / EFBIG when `error` (or an error it was raised from) is a write refused
    for lack of room, else None. orbax's TensorStore writes report the OS error in the text."""
    texts = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
             errno.EFBIG: "File too large"}
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in texts:
            return e.errno
        for code, text in texts.items():
            if text in str(e):
                return code
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(error: BaseException, root: str | os.PathLike, what: str, step: int,
                    resumes_from: int | None) -> DiskFullError | None:
    """A DiskFullError (one line: the disk, the path, the step, the free space, what to do) when
    `error` is a write refused for lack of room while `what` at `step` of the run in `root`
    (the path named when the error names none), else None; `resumes_from`: the checkpoint a
    rerun resumes from (None: it starts over)."""
    code = storage_errno(error)
    if code is None:
        return None
    path = getattr(error, "path", None) or getattr(error, "filename", None) or root
    mount = _mount_point(Path(path))
    try:
        free = f"{shutil.disk_usage(mount).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    resume = (f"the run resumes from its newest complete checkpoint, step {resumes_from}"
              if resumes_from is not None else "no checkpoint was completed: the run starts over")
    if code == errno.EFBIG:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        limit = (f"this process may write files of at most {soft} bytes (ulimit -f)"
                 if soft != resource.RLIM_INFINITY else "the file system refuses files this large")
        message = (f"file too large while {what} at step {step}: {path}: {limit}; the disk "
                   f"mounted at {mount} has {free}. Raise the limit and rerun: {resume}.")
    else:
        kind = "disk quota exceeded" if code == errno.EDQUOT else "disk full"
        message = (f"{kind} while {what} at step {step}: {path} (disk mounted at {mount}, {free})."
                   f" Free space on that disk and rerun: {resume}.")
    full = DiskFullError(message)
    full.errno = code
    return full


def check_writable(path: str | os.PathLike, what: str, *, directory: bool = False) -> Path:
    """`path` (expanded) when a file (or, with `directory`, a directory) can be written there,
    else ValueError naming `what` (e.g. '--out') and the problem: an existing entry of the other
    kind, an ancestor that is a file, or a nearest existing directory that is not writable.
    Creates nothing; scripts call it before any long computation."""
    path = Path(path).expanduser()
    kind = "directory" if directory else "file"
    try:
        if path.exists():
            if path.is_dir() != directory:
                raise ValueError(f"{what}={path} is a {'file' if directory else 'directory'}, "
                                 f"not a {kind}; choose another {what}")
            node = path if directory else path.parent
            if not os.access(path, os.W_OK) or not os.access(node, os.W_OK | os.X_OK):
                raise ValueError(f"{what}={path} is not writable; choose another {what} or fix "
                                 "its permissions")
            return path
        node = path.parent
        while not node.exists() and node.parent != node:
            node = node.parent
    except PermissionError:
        raise ValueError(f"{what}={path}: a parent directory cannot be read; choose another "
                         f"{what} or fix its permissions") from None
    if not node.is_dir():
        raise ValueError(f"{what}={path}: its parent {node} is a file, not a directory; choose "
                         f"another {what}")
    if not os.access(node, os.W_OK | os.X_OK):
        raise ValueError(f"{what}={path}: the directory {node} is not writable; choose another "
                         f"{what} or fix its permissions")
    return path
