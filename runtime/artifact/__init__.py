"""nemotron_deploy.runtime.artifact: the artifact format, the bottom layer that imports nothing else of ours.

The manifest's records (manifest.py), each field with its rule (schema.py), the errors every layer raises (errors.py), dtype
names (dtypes.py), atomic writes (atomic.py), the files' integrity (integrity.py) and how a step's
inputs and outputs bind to the manifest's states (step_binding.py). The exporter writes this format and
the runtime reads it; neither is imported from here.
"""
