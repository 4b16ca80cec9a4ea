"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""

import difflib


class MimbenchError(Exception):
    """Something the user can fix: bad config, missing file, unusable weights.

    The message is one sentence that says what is wrong and what to do.
    """


class ConfigError(MimbenchError):
    """A config key, value or file is wrong."""


class DataError(MimbenchError):
    """A dataset path is missing, empty or holds an unreadable file."""


class WeightsUnavailableError(MimbenchError):
    """Teacher weights are neither local nor downloadable right now."""


class TrainingDiverged(MimbenchError):
    """The loss became non-finite; the last good checkpoint is kept."""


class Interrupted(MimbenchError):
    """SIGINT or SIGTERM stopped a run between steps; a checkpoint was written to resume from."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'X'?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
