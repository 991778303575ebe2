"""One exception family for the whole library.

Library code raises these; only the command line (``automl_vision.cli``) turns them into exit codes
(ConfigError/DataError -> 2, TrainingDiverged -> 3, anything else -> 1). The codes are defined here, once:
a sweep reads a trial's exit code with them.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The exit codes of ``automl-vision``: success, an internal error, bad input (job, flags or data),
#: training diverged.
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3


class AutoMLError(Exception):
    """Base class of every error the library raises on purpose."""


class _ProblemList(AutoMLError):
    """An error that carries every problem found, not just the first."""

    kind = "error"

    def __init__(self, problems: str | Iterable[str], source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            raise ValueError("an error needs at least one problem")
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{prefix}{self.problems[0]}"
        lines = [f"{prefix}{len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(_ProblemList):
    """The job, a hyperparameter or a command-line flag is invalid."""


class DataError(_ProblemList):
    """The labelled data (JSONL file or its images) is invalid."""


class TrainingDiverged(AutoMLError):
    """The loss became NaN or infinite; the trial cannot go on."""

    def __init__(self, epoch: int, step: int, loss: float, during: str = "training"):
        self.epoch, self.step, self.loss = epoch, step, loss
        where = f"epoch {epoch}, global step {step}" if during == "training" else \
            f"validation after epoch {epoch} (global step {step})"
        super().__init__(
            f"training diverged: {during} loss {loss} at {where}; try a lower learning_rate or a smaller batch"
        )
