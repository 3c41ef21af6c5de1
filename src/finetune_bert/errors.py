"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Something the user can fix: bad input, a bad option, a missing model. Never a bug of ours."""

    exit_code = 2


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""

    exit_code = 130
