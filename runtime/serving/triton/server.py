"""A real `tritonserver` from the `nvidia-pytriton` wheel (which bundles the server, its Python backend
and a backend stub per Python version), started on a model repository and stopped cleanly.

The Python backend's stub runs the models in this interpreter's environment: it finds that
environment through the `python3` first on PATH, so this interpreter's bin directory goes first, and
loads libpython from the interpreter's LIBDIR. The Python backend of the wheel needs numpy < 2 in that
environment (with numpy 2 every inference fails), which the `triton` extra pins.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

TEMP_PREFIX = "nemotron-triton-"  # the temporary folders of a server: its backend folder, serve's repository
OWNER_FILE = ".owner-pid"
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
SHM_PREFIX = "triton_python_backend_shm_region"


def _pytriton_dirs() -> tuple[Path, Path]:
    """(pytriton's tritonserver directory, the wheel's bundled shared libraries)."""
    try:
        import pytriton
    except ImportError:
        raise NemotronDeployError(
            "serving needs the 'triton' extra (nvidia-pytriton is not installed): pip install 'nemotron-deploy[triton]'"
        ) from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    if not (root / "bin" / "tritonserver").is_file():
        raise NemotronDeployError(f"{root}: no bin/tritonserver in the installed nvidia-pytriton (a wheel for another platform?)")
    return root, libs


def check_environment() -> None:
    """What the Python backend needs from this interpreter, checked before starting anything."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise NemotronDeployError(
            f"numpy {numpy.__version__}: the Python backend of nvidia-pytriton's tritonserver needs numpy < 2 "
            "in the serving environment: pip install 'nemotron-deploy[triton]' (it pins numpy<2)"
        )
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    if not any(libdir.glob(f"libpython{sys.version_info.major}.{sys.version_info.minor}*.so*")):
        raise NemotronDeployError(
            f"{sys.executable}: this Python has no shared libpython in {libdir}, which Triton's Python backend loads; "
            "use a Python built with --enable-shared (distribution and pyenv builds with PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )


def owned_temp_dir(kind: str) -> Path:
    """A new temporary folder `nemotron-triton-<kind>-*` marked with this process's pid, so that a later
    start can tell it from a live server's and remove it if this process died without cleaning up."""
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-"))
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    return folder


def remove_stale_temp_dirs() -> list[Path]:
    """Remove the temporary folders of servers whose process is gone (killed: SIGKILL, the OOM killer)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        if not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Runs first in the server's process, then becomes tritonserver (exec): asks the kernel for SIGKILL when
# the process that started it dies (Linux's parent-death signal, kept across exec), so a killed `serve`
# leaves no tritonserver serving its ports. Not preexec_fn: that is unsafe in a process with threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n    pass  # not Linux: only a clean stop() stops the server\n"
    "if os.getppid() != int(sys.argv[1]):\n    sys.exit(1)  # the parent died before the signal was armed\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Endpoints:
    host: str
    http: int
    grpc: int
    metrics: int

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics}/metrics"


class TritonServer:
    """`with TritonServer(repo) as server:` starts tritonserver and waits until every model is ready;
    leaving the block stops it (SIGINT, then SIGKILL of its process group after STOP_TIMEOUT_S) and
    removes its backend directory. Ports default to free ones; host 127.0.0.1 unless given. The
    server's log goes to `log_file` ("-": this process's stderr; None: a temporary file that
    `log_tail` reads)."""

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
        verbose: bool = False,
    ):
        self.repository = Path(repository).resolve()
        self.endpoints = Endpoints(host, http_port or free_port(), grpc_port or free_port(), metrics_port or free_port())
        self.log_file = Path(log_file) if log_file else None
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self._backends: Path | None = None
        self._log = None

    def _backend_dir(self, root: Path) -> Path:
        """The wheel's Python backend plus the stub for this Python version, as Triton expects them in one folder."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise NemotronDeployError(f"{stub.parent}: nvidia-pytriton has no Python backend stub for Python {version}")
        backends = owned_temp_dir("backends")
        (backends / "python").mkdir()
        for source in [*(root / "backends" / "python").iterdir(), stub]:
            if source.is_file():
                (backends / "python" / source.name).symlink_to(source)
        return backends

    def command(self, root: Path) -> list[str]:
        e = self.endpoints
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backends}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--http-address={e.host}",
            f"--http-port={e.http}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics}",
            f"--log-verbose={1 if self.verbose else 0}",
        ]

    def _env(self, libs: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")]))
        env.pop("PYTHONPATH", None)  # the stub runs Python isolated; a PYTHONPATH would only mislead
        return env

    def start(self) -> TritonServer:
        check_environment()
        root, libs = _pytriton_dirs()
        self._backends = self._backend_dir(root)
        if self.log_file == Path("-"):
            self._log = None  # inherit: the server's log goes to our stderr
        else:
            self._log = open(self.log_file, "w") if self.log_file else tempfile.TemporaryFile("w+")
        remove_stale_temp_dirs()
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *self.command(root)]
        self.process = subprocess.Popen(
            command,
            env=self._env(libs),
            stdout=self._log or sys.stderr,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        url = f"http://{self.endpoints.http_url}/v2/health/ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NemotronDeployError(
                    f"tritonserver exited with status {self.process.returncode} while loading {self.repository}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200 and self._other_endpoints_listen():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise NemotronDeployError(f"tritonserver was not ready after {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def _other_endpoints_listen(self) -> bool:
        """Whether the gRPC and metrics ports accept connections. Triton opens them one after another
        once its models are loaded, the metrics port after HTTP's: ready on HTTP alone left a moment in
        which a client's first /metrics request was refused."""
        for port in (self.endpoints.grpc, self.endpoints.metrics):
            try:
                socket.create_connection((self.endpoints.host, port), timeout=1).close()
            except OSError:
                return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (empty when it goes to stderr)."""
        if self.log_file is not None and self.log_file != Path("-"):
            text = self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""
        elif self._log is not None:
            self._log.flush()
            self._log.seek(0)
            text = self._log.read()
        else:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGINT (Triton unloads its models and exits), then SIGKILL of the whole group if it hangs."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            try:  # the backend stubs are in the server's process group
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._backends is not None:
            shutil.rmtree(self._backends, ignore_errors=True)
            self._backends = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
