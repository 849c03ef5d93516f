"""Errors the user can act on. The CLI prints their message and exits 1, with no traceback."""


class SelectitError(Exception):
    """Base class: the message says what is wrong, where, and what to do next."""
