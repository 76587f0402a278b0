"""The one exception type that reaches the user as a single sentence instead of a traceback."""


class UserError(Exception):
    """Something the user asked for cannot be done (bad path, missing column, no GPU, ...).

    The message is one complete sentence; the command line prints it and exits non-zero.
    """


def shorten(text: str, limit: int = 160) -> str:
    """The first line of `text`, cut at a word boundary (with an ellipsis) when longer than `limit`, so a message
    quoted inside a sentence never ends mid-word."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line.rstrip(".")
    cut = line[:limit + 1].rsplit(" ", 1)[0] if " " in line[:limit + 1] else line[:limit]
    return cut.rstrip(" ,;:.(") + "..."


def quoted(value, limit: int = 60) -> str:
    """A value the user typed, quoted for a one-line sentence: control characters (a newline) escaped, long text
    shortened."""
    text = str(value)
    shown = repr(text)[1:-1] if not text.isprintable() else text
    return f"'{shown if len(shown) <= limit else shown[:limit] + '...'}'"
