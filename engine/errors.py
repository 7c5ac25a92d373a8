"""Errors a user can fix. The CLI prints their message alone, never a traceback."""


class VQGenError(Exception):
    """A problem with input, files or configuration; the message names it and the fix.

    `shared`: every rank of a torchrun job raises it together, so rank 0 alone says it."""

    exit_code = 1
    shared = False


class UsageError(VQGenError):
    """A bad command-line value, caught before any work starts (exit code 2, like argparse)."""

    exit_code = 2
