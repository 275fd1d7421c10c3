"""Errors that the CLI turns into one-line messages.

Every error raised on bad user input derives from `NemotronDeployError` and names the file, field or
tensor at fault and what was expected, so the CLI can print it without a traceback.
"""


class NemotronDeployError(Exception):
    """Base of all errors caused by bad input (not by bugs)."""


class ConfigError(NemotronDeployError, ValueError):
    """config.json is missing, unreadable, or describes a model we cannot build."""


class CheckpointError(NemotronDeployError, ValueError):
    """The weights on disk are missing, truncated, or do not match the config."""
