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


def read_json_object(path, error: type[NemotronDeployError] = NemotronDeployError) -> dict:
    """Parse a JSON file that must hold an object; any problem is an `error` naming the file."""
    import json

    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object at top level, got {type(raw).__name__}")
    return raw
