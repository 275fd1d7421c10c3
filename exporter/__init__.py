"""nemotron_deploy.exporter: NemotronH config, checkpoint loading and the export-friendly step model."""

if __name__ != "nemotron_deploy.exporter":  # imported as `exporter` from the repository root: see short_names
    from nemotron_deploy.runtime.short_names import alias_package

    alias_package(__name__)
