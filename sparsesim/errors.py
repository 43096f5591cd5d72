"""The one exception type that means "the user gave us bad input".

Every loader raises :class:`InputError` with a message that names the file or field and says
what was expected. The CLI prints it as a single line and exits with status 2; anything else
escaping is a bug in sparsesim, not in the input.
"""


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (a key read from a file
    may hold a newline, a NUL or U+2028): the message stays one line whatever the input held."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class InputError(Exception):
    """Bad input (file, field, flag): printed as one line, exit status 2."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))
