"""Errors a user can fix. The CLI prints their message alone, never a traceback."""


class VQGenError(Exception):
    """A problem with input, files or configuration; the message names it and the fix."""

    exit_code = 1


class UsageError(VQGenError):
    """A bad command-line value, caught before any work starts (exit code 2, like argparse)."""

    exit_code = 2
