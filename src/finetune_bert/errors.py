"""What a command can end with, each turned by the CLI into one line and an exit code."""


class UserError(Exception):
    """Something the user can fix: bad input, a bad option, a missing model. Never a bug of ours."""

    exit_code = 2


def refuse(problems: list[str]) -> None:
    """Every problem at once, as one UserError (one line, exit 2), so the user fixes them in one go; none:
    nothing happens."""
    if problems:
        raise UserError("; ".join(problems))


class TrainingFailed(Exception):
    """A training process died or lost the others: exit 1, as a crash, not 2 (the input was fine)."""

    exit_code = 1


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


def is_oom(exc: BaseException) -> bool:
    """Out of device or host memory, as torch raises it (its own type, or a RuntimeError from a backend)."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class RankLost(Exception):
    """A collective failed: another process died, was killed or stopped answering."""

    exit_code = 1


class Reported(Exception):
    """A failure already reported by the process that met it (another rank, a training process the launcher
    started): exit with its code, saying nothing more."""

    def __init__(self, exit_code: int, message: str = ""):
        super().__init__(message or f"stopped with exit code {exit_code}; the reason is printed above")
        self.exit_code = exit_code
