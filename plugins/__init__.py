"""nemotron_deploy.plugins: TensorRT plugins (CUDA C++) for the Mamba-2 scan and the MoE dispatch."""
