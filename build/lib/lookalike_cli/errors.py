"""Errors the CLI shows as a one-line message (exit 1) instead of a traceback."""


class LookalikeError(Exception):
    """A problem with the user's input or environment; the message says what to do next."""
