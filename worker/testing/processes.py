"""Run ``position-worker`` as a real child process (kill -9, SIGTERM, several replicas)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class WorkerProcess:
    """``python -m worker run`` with the given environment; its log lines are kept.

    ``keep_lines=False`` (the benchmark): the worker writes its log straight into
    ``log_path``, as under a supervisor, instead of through a pipe that a thread of this
    process reads line by line (a Python reader of every audit line would compete with the
    worker for the CPU it is measured on)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        keep_lines: bool = True,
        module: str = "worker",  # what `python -m` runs (recovery tests: an armed worker)
        python: str = sys.executable,  # another checkout's interpreter (the bench's baseline)
        cwd: Path | None = None,  # where it runs: `python -m` imports from there first
    ) -> None:
        self.env = {**os.environ, **env, "POSITION_WORKER__LOG__FORMAT": "json"}
        self.module, self.python, self.cwd = module, python, cwd
        self.log_path = log_path
        self.keep_lines = keep_lines
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._started = threading.Event()
        self._exited = threading.Event()

    def start(self, timeout: float = 30.0, args: tuple[str, ...] = ("run",)) -> WorkerProcess:
        self._started.clear()
        self._exited.clear()
        if not self.keep_lines:
            return self._start_to_file(timeout, args)
        self.process = self._spawn(args, subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        if not self._started.wait(timeout):
            self.kill()
            raise RuntimeError("worker did not start:\n" + "".join(self.lines[-30:]))
        return self

    def _start_to_file(self, timeout: float, args: tuple[str, ...]) -> WorkerProcess:
        # the log may hold earlier runs (it is appended to): wait for one more start line
        before = self.logged("worker_started") if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            process = self.process = self._spawn(args, log)
        self._exited.set()  # no pump to wait for
        deadline = time.monotonic() + timeout
        while self.logged("worker_started") <= before:
            if process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
                raise RuntimeError("worker did not start:\n" + "\n".join(tail))
            time.sleep(0.02)  # polling a file the child writes: there is nothing to wait on
        return self

    def _spawn(self, args: tuple[str, ...], stdout: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.python, "-m", self.module, *args],
            env=self.env,
            cwd=self.cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with self.log_path.open("a") as log:
            for line in process.stdout:
                self.lines.append(line)
                log.write(line)
                if '"worker_started"' in line:
                    self._started.set()
        self._exited.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill would be."""
        self.signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._exited.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def logged(self, event: str) -> int:
        """How many log lines carry this event name."""
        needle = f'"event": "{event}"'
        if not self.keep_lines:
            with self.log_path.open(errors="replace") as log:
                return sum(needle in line for line in log)
        return sum(needle in line for line in self.lines)
