"""Atomic outputs: a file appears under its final name only when it is complete.

Writers write to a hidden temporary file in the destination directory and rename it into place
(rename is atomic on POSIX within one filesystem). On any failure the temporary file is removed,
so a crash or an error never leaves a partial file that looks complete.

The rename replaces whatever has the final name, so an output is refused when its final path is
anything but a regular file: ``--json /dev/null`` run as root would otherwise replace the device
node with a file, and a named pipe or socket would silently vanish. It is checked before any work
starts and again just before the rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from sparsesim.errors import InputError, system_reason
from sparsesim.inputs import file_kind

_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one line, if ``path`` cannot be created (before any long work starts)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    _refuse_special(path)
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{path}: cannot create output directory {parent}: {system_reason(e) or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output directory {parent} is not writable")
    return path


def _refuse_special(path: Path) -> None:
    """An existing output path must be a regular file (or a link to one): the rename would replace it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):   # absent (or unusable: the write itself reports it)
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is {file_kind(mode)}; an output may only replace a regular file")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    final = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)   # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        _refuse_special(final)
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        try:
            tmp.write_text(text)
        except OSError as e:
            raise InputError(f"{path}: cannot write: {system_reason(e) or e}") from None
    return Path(path)
