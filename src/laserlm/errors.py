"""Errors that the CLI turns into exit codes."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with 2.

    The message should name the problem and, where one exists, the fix.
    """
