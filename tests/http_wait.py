"""Waiting for a server the tests started: its URL answers 200, or the process died, or time ran out."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 120) -> bool:
    """True once GET `url` answers 200; False if `process` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False
