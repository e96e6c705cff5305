"""The project's error type (torch-free): a one-line message meant for the user."""


class PipError(RuntimeError):
    """An error with a one-line message meant for the user (bad input, numeric fault, ...); the steps' CLIs print
    it as one line and exit 1."""
