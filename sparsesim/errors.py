"""The one exception type that means "the user gave us bad input", and the one place that words
the machine's own failures.

Every loader raises :class:`InputError` with a message that names the file or field and says
what was expected. The CLI prints it as a single line and exits with status 2; anything else
escaping is a bug in sparsesim, not in the input.

A full disk, too many open files, no memory, no permission or a read-only file system are not
damaged input: :func:`system_reason` gives their honest words whichever library raised them
(Python, or pyarrow, which folds the errno into its message), so that no reader ever calls a
file "corrupt" because the machine ran out of something.
"""

from __future__ import annotations

import errno
import os
import re


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (a key read from a file
    may hold a newline, a NUL or U+2028): the message stays one line whatever the input held."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class InputError(Exception):
    """Bad input (file, field, flag): printed as one line, exit status 2."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


# What the user can do about a limit of the machine, after the operating system's own words.
_HINTS = {
    errno.EMFILE: " (this process's open-file limit; raise it with ulimit -n)",
    errno.ENFILE: " (the system's open-file table is full)",
    errno.ENOMEM: " (a trace larger than memory replays with simulate --stream)",
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)   # pyarrow: "... Detail: [errno 24] Too many ..."
MEMORY = "not enough memory" + _HINTS[errno.ENOMEM]


def system_reason(error: BaseException) -> str | None:
    """The honest one-line reason when ``error`` is the machine's (an errno from the operating
    system, or memory exhausted); ``None`` when it is not (then the input itself is at fault)."""
    if isinstance(error, MemoryError):   # pyarrow.ArrowMemoryError is one too
        return MEMORY
    if not isinstance(error, OSError):
        return None
    code = error.errno
    if not code:
        match = _ERRNO_IN_TEXT.search(str(error))
        code = int(match.group(1)) if match else None
    if not code:
        return None
    if code == errno.ENOMEM:
        return MEMORY
    return os.strerror(code) + _HINTS.get(code, "")
