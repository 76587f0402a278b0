"""The one exception type that reaches the user as a single sentence instead of a traceback."""


class UserError(Exception):
    """Something the user asked for cannot be done (bad path, missing column, no GPU, ...).

    The message is one complete sentence; the command line prints it and exits non-zero.
    """
