"""The audit watch in a process of its own, one beside each web worker.

The watch verifies the audit log at start-up and on schedule, verifies every new entry,
compares every GMP table with the records the log describes, publishes checkpoints before a
kiosk's request has to, and resubmits to witnesses (:func:`mes.jobs.audit_watch_loop`).
That is Python computing for hundreds of milliseconds at a time. In the web worker's own
process each request thread waited for it at every step (CPython runs one thread at a
time): the execution bench's step completions were 0.4-1.4 ms slower at p50 with the watch
than without it. Here it runs in a child process, at a lower CPU priority, and the worker
only hears from it.

The worker (:class:`AuditWatch`) starts ``python -m mes.audit.watcher`` and talks to it
over two pipes:

- to the child, on its standard input: the app's config (one pickled line, so the child
  connects to the same database with the same keys as the worker, however the worker was
  configured), then ``publish`` each time a commit brought the log near a checkpoint;
- from the child, on a descriptor of its own (its standard output goes to standard error,
  so no library can write into the protocol): one JSON line whenever the verification
  state (for ``/readyz``) or the latest checkpoint (the worker's cached size and time, which
  decide when a request publishes) changed.

The child ends when its standard input closes: when the worker exits, however it exits.
The worker starts it again if it dies, after a growing pause, and says so in its log.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import IO, Any

from flask import Flask

logger = logging.getLogger("mes.audit.watcher")

#: The child's niceness: the kiosks' requests come first, the watch takes what is left.
NICENESS = 10
#: Pauses before starting a child that died again (seconds), the last one repeated.
RESTART_PAUSES = (1.0, 5.0, 30.0)


def _config_of(app: Flask) -> dict[str, Any]:
    """The worker's config, each value that can travel (a value that cannot is left out)."""
    out = {}
    for key, value in app.config.items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001, S112 - functions or live objects stay with the worker
            continue
        out[key] = value
    return out


class AuditWatch:
    """The worker's handle on its watch process: start, wake, hear, restart, stop."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._started = 0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the worker side

    def start(self) -> None:
        """Start the child and the thread that hears it (and restarts it)."""
        self._thread = threading.Thread(target=self._run, name="mes-audit-watch", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A commit brought the log near a checkpoint: ask the child to publish it now."""
        self._send(b"publish\n")

    def stop(self, timeout: float = 30.0) -> None:
        """End the child (its input closes) and wait for it."""
        self._stopped.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        self._close_input(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between two children)."""
        with self._lock:
            return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def _send(self, line: bytes) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):  # the child is gone; _run restarts it
                pass

    @staticmethod
    def _close_input(proc: subprocess.Popen[bytes]) -> None:
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass

    def _spawn(self) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mes.audit.watcher", str(write_fd)], stdin=subprocess.PIPE,
                pass_fds=(write_fd,), close_fds=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            os.close(write_fd)
        assert proc.stdin is not None
        try:
            proc.stdin.write(base64.b64encode(pickle.dumps(_config_of(self.app))) + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:  # it died at once: its reports end, its exit code is logged, it is restarted
            pass
        return proc, os.fdopen(read_fd, "rb")

    def _run(self) -> None:
        pauses = iter(RESTART_PAUSES)
        pause = 0.0
        while not self._stopped.is_set():
            if pause and self._stopped.wait(pause):
                return
            try:
                proc, reports = self._spawn()
            except OSError:
                logger.exception("the audit watch process could not start")
                pause = next(pauses, RESTART_PAUSES[-1])
                continue
            with self._lock:
                self._proc = proc
            self._started += 1
            started = time.monotonic()
            with reports:
                for line in reports:
                    try:
                        self._heard(line)
                    except Exception:  # noqa: BLE001 - one report misapplied must not end the hearing
                        logger.exception("a report of the audit watch process could not be applied")
            code = proc.wait()
            with self._lock:
                self._proc = None
            if self._stopped.is_set():
                return
            if time.monotonic() - started > 600:  # it ran a while: the next death starts a fresh series
                pauses = iter(RESTART_PAUSES)
            pause = next(pauses, RESTART_PAUSES[-1])
            logger.error("the audit watch process ended (exit code %s); starting it again in %.0f s", code, pause)

    def _heard(self, line: bytes) -> None:
        """Apply one report of the child to this worker."""
        from mes.audit.log import audit_log
        from mes.system.readiness import audit_status

        try:
            report = json.loads(line)
        except ValueError:
            logger.error("the audit watch process sent an unreadable report: %r", line[:200])
            return
        with self.app.app_context():
            if "audit" in report:
                status, heard = audit_status(), report["audit"]
                status.state, status.detail = heard["state"], heard["detail"]
                status.checked_at = None if heard["checked_at"] is None else datetime.fromisoformat(heard["checked_at"])
            if report.get("checkpoint") is not None:
                size, at = report["checkpoint"]
                log = audit_log()
                cached = log.last_checkpoint
                if cached is None or cached[0] < size:
                    log.last_checkpoint = (size, None if at is None else datetime.fromisoformat(at))


# ---------------------------------------------------------------------- the child side


class Reporter:
    """What the child tells its worker: the verification state and the latest checkpoint, when changed."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._last: dict[str, Any] = {}

    def __call__(self, app: Flask) -> None:
        from mes.audit.log import audit_log
        from mes.system.readiness import audit_status

        with app.app_context():
            status = audit_status()
            audit = {"state": status.state, "detail": status.detail,
                     "checked_at": None if status.checked_at is None else status.checked_at.isoformat()}
            cached = audit_log().last_checkpoint
        checkpoint = None if cached is None else [cached[0], None if cached[1] is None else cached[1].isoformat()]
        report = {k: v for k, v in (("audit", audit), ("checkpoint", checkpoint)) if v != self._last.get(k)}
        if not report:
            return
        self._last.update(report)
        self.out.write(json.dumps(report).encode("utf-8") + b"\n")
        self.out.flush()


def _listen(wanted: threading.Event) -> None:
    """Read the worker's requests; end this process when its input closes (the worker is gone)."""
    for line in sys.stdin.buffer:
        if line.strip() == b"publish":
            wanted.set()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """The child: ``python -m mes.audit.watcher <report descriptor>``, config on standard input."""
    argv = sys.argv[1:] if argv is None else argv
    out = os.fdopen(int(argv[0]), "wb")
    os.dup2(2, 1)  # print() and chatty libraries write to standard error, never into the reports
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    config = pickle.loads(base64.b64decode(sys.stdin.buffer.readline()))  # noqa: S301 - from the parent's pipe
    from mes import create_app
    from mes.jobs import audit_watch_loop

    app = create_app(config)
    wanted = threading.Event()
    threading.Thread(target=_listen, args=(wanted,), name="mes-audit-watch-input", daemon=True).start()
    audit_watch_loop(app, wanted, Reporter(out))


if __name__ == "__main__":
    main()
