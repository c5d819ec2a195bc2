"""The one exception type that the CLI turns into a single line and exit status 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, wrong value, corrupt file).

    The message must name the file or value and say what to do; the CLI prints it as one line, with no traceback.
    """
