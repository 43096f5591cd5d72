"""Opening what a user points at: regular files only, checked before a single byte is read.

Every input path (traces, profiles, sweep specs, texts, thresholds, model files, results) goes
through :func:`regular_file` or the readers below. A named pipe would block the open forever,
``/dev/zero`` would be read without end and a directory or a device is never a document, so
anything but a regular file is refused with one line naming the path. The file is opened
non-blocking and checked with ``fstat`` on the opened descriptor, so a path swapped for a pipe
between the check and the read cannot hang the reader either. Documents (YAML, JSON, text) also
have a size bound, so a stray multi-gigabyte file is refused instead of read whole.

Errors are :class:`~sparsesim.errors.InputError` lines that start with ``where`` (the path, or
the flag and the path, as the caller names the input).

Globs in sweep specs expand with :func:`bounded_glob`: it walks at most
:data:`sparsesim.limits.GLOB_ENTRIES` directory entries (``root: /`` with ``**/*.parquet`` is
refused in a second instead of walking the whole filesystem) and never follows a symbolic link to
a directory while expanding ``**``, so a recursive glob stays below the folder it starts in.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from pathlib import Path

from sparsesim.errors import InputError, system_reason
from sparsesim.limits import GLOB_ENTRIES

DOCUMENT_BYTES = 64 << 20     # a sweep spec, profile, thresholds or results JSON: far above any real one
TEXT_BYTES = 1 << 30          # a text to trace (WikiText-103's training split is 540 MB)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (FIFO)")."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _refuse(where: str, error: OSError | ValueError) -> InputError:
    if isinstance(error, FileNotFoundError):
        return InputError(f"{where}: no such file")
    if isinstance(error, OSError):
        return InputError(f"{where}: cannot open: {system_reason(error) or error}")
    return InputError(f"{where}: not a usable path ({error})")   # e.g. a NUL byte in the name


def _checked(mode: int, where: str) -> None:
    if not stat.S_ISREG(mode):
        raise InputError(f"{where}: is {file_kind(mode)}, expected a regular file")


def regular_file(path: str | os.PathLike, where: str | None = None) -> Path:
    """``path`` if it is a regular file (symbolic links followed); else one InputError line."""
    where = where or str(path)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as e:
        raise _refuse(where, e) from None
    _checked(mode, where)
    return Path(path)


def read_bytes(path: str | os.PathLike, where: str | None = None, limit: int = DOCUMENT_BYTES) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes."""
    where = where or str(path)
    regular_file(path, where)   # refuse a device or pipe before even opening it (an open may have effects)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise _refuse(where, e) from None
    with os.fdopen(fd, "rb") as f:
        try:
            info = os.fstat(fd)
            _checked(info.st_mode, where)    # the path may have been swapped since the check above
            if info.st_size > limit:
                raise InputError(f"{where}: {info.st_size:,} bytes; at most {limit:,} are read from a file of this kind")
            data = f.read(info.st_size + 1)
        except OSError as e:
            raise InputError(f"{where}: cannot read: {system_reason(e) or e}") from None
    if len(data) > info.st_size:
        raise InputError(f"{where}: the file grew while it was read; read it again once it is complete")
    return data


def read_text(path: str | os.PathLike, where: str | None = None, limit: int = DOCUMENT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, line ends read as ``open()``'s text
    mode reads them (CR LF and a lone CR become LF), so a text's SHA-256 is what it always was."""
    where = where or str(path)
    data = read_bytes(path, where, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def bounded_glob(root: str | os.PathLike, pattern: str) -> set[str]:
    """``glob.glob(pattern, root_dir=root, recursive=True)`` (hidden names skipped unless the pattern
    names them) walking at most ``GLOB_ENTRIES`` directory entries, ``**`` never through a symbolic link."""
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    base = "/" if os.path.isabs(pattern) else os.fspath(root)
    where = f"glob {pattern!r} under {base}"
    walked = 0
    found: set[str] = set()

    def entries(folder: str) -> list[os.DirEntry]:
        nonlocal walked
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError:          # unreadable or vanished: matches nothing, like glob
            return []
        walked += len(items)
        GLOB_ENTRIES.check(walked, where)
        return items

    def walk(folder: str, name: str, i: int) -> None:
        if i == len(parts):
            if name:             # "**" alone matches below the folder, not the folder itself
                found.add(name)
            return
        part, last = parts[i], i + 1 == len(parts)
        if part == "**":
            walk(folder, name, i + 1)
            for entry in entries(folder):
                if entry.name.startswith("."):
                    continue
                if last:
                    found.add(os.path.join(name, entry.name))
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, os.path.join(name, entry.name), i)
        elif not glob.has_magic(part):
            path = os.path.join(folder, part)
            if os.path.lexists(path) if last else os.path.isdir(path):
                walk(path, os.path.join(name, part), i + 1)
        else:
            for entry in entries(folder):
                if (part.startswith(".") or not entry.name.startswith(".")) and fnmatch.fnmatchcase(entry.name, part) \
                        and (last or entry.is_dir()):
                    walk(entry.path, os.path.join(name, entry.name), i + 1)

    walk(base, "/" if base == "/" else "", 0)
    return found
