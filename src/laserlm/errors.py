"""Errors that the CLI turns into exit codes."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with 2.

    The message should name the problem and, where one exists, the fix.
    """


class HubUnavailable(UserError):
    """A built-in task's data could not be had from the hub; the command says how to give a local copy."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type if it has none): libraries' errors inside ours."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
