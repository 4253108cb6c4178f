"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class PictagError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""
