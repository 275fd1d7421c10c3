"""nemotron_deploy.runtime: run exported NemotronH artifacts (light dependencies, no PyTorch)."""

if __name__ != "nemotron_deploy.runtime":  # imported as `runtime` from the repository root: see short_names
    from nemotron_deploy.runtime.short_names import alias_package

    alias_package(__name__)

from nemotron_deploy.runtime.errors import CheckpointError, ConfigError, NemotronDeployError

__all__ = ["CheckpointError", "ConfigError", "NemotronDeployError"]
