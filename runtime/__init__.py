"""nemotron_deploy.runtime: run exported NemotronH artifacts (light dependencies, no PyTorch)."""

from nemotron_deploy.runtime.artifact.errors import CheckpointError, ConfigError, NemotronDeployError

__all__ = ["CheckpointError", "ConfigError", "NemotronDeployError"]
