"""nemotron_deploy.runtime.serving: serving artifacts, above the runtime it drives.

triton/      model repositories, the Python models that run inside Triton, the server
openai_api/  the OpenAI-compatible endpoints in front of Triton (`serve`)
"""
