"""``mes demo`` runs the outbox relay inside its server: an endpoint added with the CLI (as
the README shows) receives events without any `mes relay` process, verified by the
``standardwebhooks`` library."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from mes.demo import DEMO_PASSWORD
from tests.integration.receiver import Receiver
from tests.test_demo import Demo, _free_port, _stop, _wait_ready

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from mes.cli import main; main()"]


class OurDemo(Demo):
    """``mes demo`` from this checkout (not the installed console script)."""

    def __init__(self, home: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k.startswith("MES_ARGON2_")}
        env["MES_HOME"] = str(home)
        self.env = env
        self.proc = subprocess.Popen([*CLI, "demo", "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def test_demo_delivers_to_an_endpoint_added_with_the_cli(tmp_path: Path) -> None:
    port = _free_port()
    demo = OurDemo(tmp_path / "demo", port)
    receiver = Receiver().start()
    try:
        _wait_ready(f"http://127.0.0.1:{port}", demo)
        demo.wait_for_line("integration:")
        env = {**demo.env, "MES_CLI_PASSWORD": DEMO_PASSWORD}
        added = subprocess.run([*CLI, "endpoint", "add", "erp", "--url", receiver.url, "--as", "admin"], env=env,
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        receiver.secrets.append(re.search(r"(whsec_\S+)", added.stdout).group(1))
        # the demo's seeding signed checkpoints before the endpoint existed: send them again
        replay = subprocess.run([*CLI, "endpoint", "replay", "--type", "mes.audit.checkpoint.v1", "--endpoint", "erp",
                                 "--reason", "demo", "--as", "admin"], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert replay.returncode == 0 and "queued" in replay.stdout, replay.stderr
        queued = int(replay.stdout.split("queued ")[1].split()[0])
        assert queued >= 1
        got = receiver.wait_for(lambda rs: len(rs) >= queued, timeout=60)
        assert {r.event["type"] for r in got} == {"mes.audit.checkpoint.v1"} and not receiver.rejected
    finally:
        receiver.stop()
        out = _stop(demo)
    assert "mes endpoint add erp --url" in out
