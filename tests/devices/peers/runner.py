"""Start and stop the Node.js peers in this folder (see package.json).

Install them with ``npm ci --prefix tests/devices/peers``. A test that needs
a peer *fails* (never skips) when ``node`` or the packages are missing, so a
CI run without them cannot pass by accident.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["INSTALL_HINT", "PEERS_DIR", "LazyPeer", "NodePeer", "require_peers", "start_peer"]

PEERS_DIR = Path(__file__).resolve().parent
INSTALL_HINT = "run `npm ci --prefix tests/devices/peers` (needs node >= 20 and npm)"


def require_peers(*packages: str) -> str:
    """Path of ``node``; fail the test with an install hint when it or a package is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"`node` is not on PATH; the independent protocol peers need it: {INSTALL_HINT}")
    for package in packages:
        if not (PEERS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"peer package {package!r} is not installed in {PEERS_DIR}: {INSTALL_HINT}")
    return node


@dataclass
class NodePeer:
    """A running peer: its process, the port it listens on and the rest of its READY line."""

    process: subprocess.Popen[str]
    port: int
    info: list[str]
    stderr_path: Path

    def stderr(self) -> str:
        """What the peer wrote on stderr so far."""
        return self.stderr_path.read_text(errors="replace")


@contextlib.contextmanager
def start_peer(
    script: str, *args: str, packages: tuple[str, ...], workdir: Path, ready_timeout: float = 90.0
) -> Iterator[NodePeer]:
    """Run ``node <script> <args>``; wait for ``READY <port> ...``; stop it afterwards.

    The peer stops when its stdin closes, so it never outlives the test run.
    """
    node = require_peers(*packages)
    stderr_path = workdir / f"{Path(script).stem}.stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [node, str(PEERS_DIR / script), *args],
            cwd=PEERS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, name=f"peer-{script}", daemon=True).start()
    try:
        deadline = time.monotonic() + ready_timeout
        chatter: list[str] = []  # node-opcua logs warnings on stdout before READY
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"{script} did not get ready within {ready_timeout:g} s; output:\n"
                    f"{''.join(chatter)}stderr:\n{stderr_path.read_text()}"
                )
            words = line.split()
            if len(words) >= 2 and words[0] == "READY":
                break
            if not line:
                process.wait(5)
                pytest.fail(
                    f"{script} did not start (exit {process.poll()}); output:\n"
                    f"{''.join(chatter)}stderr:\n{stderr_path.read_text()}"
                )
            chatter.append(line)
        yield NodePeer(process, int(words[1]), words[2:], stderr_path)
    finally:
        with contextlib.suppress(Exception):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class LazyPeer:
    """A peer shared by a module's tests, started by the first test that asks for it.

    Starting inside the test (not in fixture setup) makes a missing ``node``
    or package a test *failure* with the install hint; a failed start is
    remembered, so later tests fail at once instead of waiting again.
    """

    def __init__(self, script: str, *args: str, packages: tuple[str, ...], workdir: Path) -> None:
        self.script, self.args, self.packages, self.workdir = script, args, packages, workdir
        self._stack = contextlib.ExitStack()
        self._peer: NodePeer | None = None
        self._failure: str | None = None

    def get(self) -> NodePeer:
        """The running peer; pytest.fail when it cannot be started."""
        if self._peer is not None:
            return self._peer
        if self._failure is not None:
            pytest.fail(self._failure)
        try:
            self._peer = self._stack.enter_context(
                start_peer(self.script, *self.args, packages=self.packages, workdir=self.workdir)
            )
        except pytest.fail.Exception as exc:
            self._failure = str(exc)
            raise
        return self._peer

    def close(self) -> None:
        """Stop the peer if it was started."""
        self._stack.close()
