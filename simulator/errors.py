"""The one exception type that means "the user gave us bad input".

Every loader raises :class:`InputError` with a message that names the file or field and says
what was expected. The CLI prints it as a single line and exits with status 2; anything else
escaping is a bug in sparsesim, not in the input.
"""


class InputError(Exception):
    """Bad input (file, field, flag): printed as one line, exit status 2."""
