"""Runs the OpenAI-compatible app (uvicorn) in the `serve` process, beside its tritonserver."""

from __future__ import annotations

import socket
import subprocess
import threading

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.serving.openai_api.protocol import ModelInfo

STOP_GRACE_S = 5


class OpenAIServer:
    def __init__(self, model: ModelInfo, host: str, port: int):
        """Checks now that host:port can be listened on (before anything else starts)."""
        self.model, self.host, self.port = model, host, port
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as e:
            raise NemotronDeployError(f"--openai-port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another port") from None

    def run(self, grpc_url: str, triton: subprocess.Popen) -> int | None:
        """Serve until SIGINT / SIGTERM (uvicorn's handlers, installed explicitly, so also where a shell
        started us with SIGINT ignored) or until `triton` exits; returns its exit status then, else None."""
        import uvicorn

        from nemotron_deploy.runtime.serving.openai_api.app import create_app

        # a stop waits this long for answers in flight (then cancels them: their requests are cancelled in Triton)
        config = uvicorn.Config(
            create_app(self.model, grpc_url),
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=STOP_GRACE_S,
        )
        web = uvicorn.Server(config)
        exited: list[int] = []

        def watch() -> None:
            exited.append(triton.wait())
            web.should_exit = True

        threading.Thread(target=watch, name="watch-tritonserver", daemon=True).start()
        web.run()
        return exited[0] if exited else None
