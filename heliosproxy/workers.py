"""Multi-process mode: a supervisor forks N workers sharing the port (SO_REUSEPORT) and links them over unix sockets.

Each worker listens on its own unix socket in a run directory made by the supervisor. A worker
that receives a CancelRequest for a key another worker issued (the worker id sits in the key's
low byte) forwards it there; pg_cancel_backend/pg_terminate_backend of a PID another worker issued
(the worker id sits in bits 24-29 of the PID) are asked of that worker (op P); worker 0 asks every
worker for a stats snapshot when the admin console or /metrics wants the whole process group's numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from heliosproxy.config.schema import Config

log = logging.getLogger("heliosproxy.workers")
_II = struct.Struct("!II")
_IB = struct.Struct("!IB")


class WorkerLink:
    """This worker's end of the inter-worker channel (cancel forwarding and snapshots)."""

    def __init__(self, rundir: Path, worker_id: int, workers: int, shared_lock: Any = None):
        self.rundir = rundir
        self.worker_id = worker_id
        self.workers = workers
        self.shared_lock = shared_lock  # process-shared lock made before the fork (rate limit table)
        self.on_cancel: Callable[[int, int], bool] | None = None
        self.snapshot: Callable[[], dict[str, Any]] | None = None
        self.on_close_idle: Callable[[str], int] | None = None  # close idle connections to a database
        # pg_cancel_backend/pg_terminate_backend of a PID this worker issued (session/pidmap.py):
        # (pid, action) -> the answer's bytes.
        self.on_pid: Callable[[int, int], bytes] | None = None
        # The admin console of a peer: a JSON request (a SHOW's rows, a command to run here) -> JSON answer.
        self.on_admin: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        # Other requests a peer may make: op byte -> function returning the answer's bytes.
        self.handlers: dict[bytes, Callable[[], bytes]] = {b"S": self._snapshot_bytes}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # cancel forwards in flight (referenced until done)

    def path(self, worker: int) -> str:
        return str(self.rundir / f"w{worker}.sock")

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(self.worker_id))
        self._server = await asyncio.start_unix_server(self._handle, self.path(self.worker_id))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(self.worker_id))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            op = await asyncio.wait_for(reader.readexactly(1), 2.0)
            if op == b"C":
                pid, key = _II.unpack(await asyncio.wait_for(reader.readexactly(8), 2.0))
                if self.on_cancel is not None:
                    self.on_cancel(pid, key)
            elif op == b"D":
                (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2.0))
                database = (await asyncio.wait_for(reader.readexactly(n), 2.0)).decode()
                closed = self.on_close_idle(database) if self.on_close_idle is not None else 0
                writer.write(struct.pack("!II", 4, closed))
                await writer.drain()
            elif op == b"P":
                pid, action = _IB.unpack(await asyncio.wait_for(reader.readexactly(_IB.size), 2.0))
                data = self.on_pid(pid, action) if self.on_pid is not None else b""
                writer.write(struct.pack("!I", len(data)) + data)
                await writer.drain()
            elif op == b"J":  # admin console request (JSON)
                (n,) = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 2.0))
                request = json.loads(await asyncio.wait_for(reader.readexactly(n), 2.0))
                answer: dict[str, Any] = {"error": "no admin console"}
                if self.on_admin is not None:
                    answer = await self.on_admin(request)
                data = json.dumps(answer, default=str).encode()
                writer.write(struct.pack("!I", len(data)) + data)
                await writer.drain()
            elif op in self.handlers:
                data = self.handlers[op]()
                writer.write(struct.pack("!I", len(data)) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def forward_cancel(self, pid: int, key: int) -> None:
        """A cancel key this worker does not know: send it to the worker that issued it."""
        target = key & 0xFF
        if target == self.worker_id or target >= self.workers:
            return
        task = asyncio.get_running_loop().create_task(self._send_cancel(target, pid, key))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("forwarding a cancel request failed: %r", task.exception())

    async def _send_cancel(self, worker: int, pid: int, key: int) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path(worker)), 2.0)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot forward a cancel request to worker %d: %s", worker, exc)
            return
        writer.write(b"C" + _II.pack(pid, key))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def ask_pid(self, worker: int, pid: int, action: int) -> bytes | None:
        """Ask `worker` about (or to signal) the session it gave `pid`; None if it does not answer."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path(worker)), 2.0)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot reach worker %d about PID %d: %s", worker, pid, exc)
            return None
        try:
            writer.write(b"P" + _IB.pack(pid, action))
            n = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 2.0))[0]
            return await asyncio.wait_for(reader.readexactly(n), 2.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.warning("worker %d did not answer about PID %d: %s", worker, pid, exc)
            return None
        finally:
            writer.close()

    async def ask_all(self, op: bytes) -> list[tuple[int, bytes]]:
        """Ask every other worker for `op` (see handlers); workers that do not answer are left out."""
        out: list[tuple[int, bytes]] = []
        for w in range(self.workers):
            if w == self.worker_id:
                continue
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path(w)), 1.0)
                writer.write(op)
                n = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 2.0))[0]
                out.append((w, await asyncio.wait_for(reader.readexactly(n), 2.0)))
                writer.close()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("worker %d did not answer %r: %s", w, op, exc)
        return out

    async def ask_admin(self, request: dict[str, Any], timeout: float | None = 5.0) -> list[dict[str, Any]]:
        """Send an admin request to every other worker at once; their answers (each with its `worker`).

        `timeout` bounds the wait for an answer (PAUSE and WAIT_CLOSE answer once connections are released)."""
        data = json.dumps(request).encode()

        async def one(w: int) -> dict[str, Any] | None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path(w)), 1.0)
            except (OSError, TimeoutError) as exc:
                log.warning("worker %d is not reachable for an admin request: %s", w, exc)
                return None
            try:
                writer.write(b"J" + struct.pack("!I", len(data)) + data)
                n = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), timeout))[0]
                answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readexactly(n), 5.0))
                answer["worker"] = w
                return answer
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                log.warning("worker %d did not answer an admin request: %r", w, exc)
                return None
            finally:
                writer.close()

        answers = await asyncio.gather(*(one(w) for w in range(self.workers) if w != self.worker_id))
        return [a for a in answers if a is not None]

    async def close_idle_everywhere(self, database: str) -> None:
        """Ask every other worker to close its idle connections to `database` (and wait for it)."""
        name = database.encode()
        await self.ask_all(b"D" + struct.pack("!H", len(name)) + name)

    def _snapshot_bytes(self) -> bytes:
        return json.dumps(self.snapshot() if self.snapshot else {}, default=str).encode()

    async def gather(self) -> list[dict[str, Any]]:
        """Snapshots of every worker (this one included), for aggregated admin views and metrics."""
        out: list[dict[str, Any]] = [self.snapshot() if self.snapshot else {}]
        for w, data in await self.ask_all(b"S"):
            try:
                out.append(json.loads(data))
            except ValueError as exc:
                log.debug("worker %d sent a bad snapshot: %s", w, exc)
        return out


def _die_with(parent: int) -> None:
    """In a worker: when the supervisor dies (even by SIGKILL), the kernel sends this worker SIGTERM, so that
    no orphaned worker keeps serving the port with nobody supervising it (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(config: Config, run_worker: Callable[[Config, int, WorkerLink], int]) -> int:
    """Fork `config.workers` processes and keep them running; forward SIGTERM/SIGINT/SIGHUP to all."""
    n = config.workers
    rundir = Path(tempfile.mkdtemp(prefix="heliosproxy-"))
    shared_lock = multiprocessing.get_context("fork").Lock()  # inherited by every worker (traffic/limits.py)
    children: dict[int, int] = {}  # pid -> worker id
    stopping = False
    parent = os.getpid()

    def spawn(worker: int) -> None:
        pid = os.fork()
        if pid == 0:
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
            _die_with(parent)
            code = 1
            try:
                code = run_worker(config, worker, WorkerLink(rundir, worker, n, shared_lock))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = worker

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    for w in range(n):
        spawn(w)
    log.info("started %d workers sharing %s", n, config.listen)
    exit_code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except InterruptedError:
                continue
            except ChildProcessError:
                break
            worker = children.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                exit_code = code if code > 0 else 1
            if code == 0 and not stopping:
                # Only the console's SHUTDOWN ends a worker with 0 unasked; every worker got it.
                log.info("worker %d shut down (SHUTDOWN); not restarting it", worker)
                continue
            if not stopping:
                log.error("worker %d exited with %s; restarting it", worker, code)
                time.sleep(0.2)
                spawn(worker)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    return 0 if stopping else exit_code
