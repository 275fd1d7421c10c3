"""nemotron_deploy.plugins: TensorRT plugins (CUDA C++) for the Mamba-2 scan and the MoE dispatch."""

if __name__ != "nemotron_deploy.plugins":  # imported as `plugins` from the repository root: see short_names
    from nemotron_deploy.runtime.short_names import alias_package

    alias_package(__name__)
