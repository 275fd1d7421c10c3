"""Serving from Triton Inference Server: model repositories (`nemotron-deploy triton`), the models that
run inside the server, and a real server for `nemotron-deploy serve` and the tests (docs/triton.md)."""
