"""nemotron_deploy.exporter: NemotronH config, checkpoint loading and the export-friendly step model."""
