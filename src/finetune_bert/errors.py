"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Something the user can fix: bad input, a bad option, a missing model. Never a bug of ours."""

    exit_code = 2
