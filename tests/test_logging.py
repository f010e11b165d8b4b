"""The console shows the MES's own log lines at MES_LOG_LEVEL and libraries' warnings only,
unless MES_LOG_LEVEL=DEBUG asks for everything."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from devices.network import quiet_library_logs
from mes.observability import JSONFormatter, configure_logging


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What the JSON console handler writes, while the test runs (after a network driver has
    put its link-chatter filter on the protocol libraries' loggers, as in a running gateway)."""
    for name in ("asyncua.server.address_space", "pymodbus.server"):
        logging.getLogger(name)
    quiet_library_logs()
    configure_logging("WARNING")
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JSONFormatter))
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    previous = handler.setStream(out)
    try:
        yield out
    finally:
        handler.setStream(previous)
        configure_logging("WARNING")  # as the test apps configure it


def _emit_all() -> None:
    for name in ("mes.gateway", "devices.sim.opcua", "alembic.runtime.migration", "asyncua.server.address_space",
                 "pymodbus.server", "engineio", "socketio", "werkzeug", "some.other.library"):
        logger = logging.getLogger(name)
        logger.debug("debug from %s", name)
        logger.info("info from %s", name)
        logger.warning("warning from %s", name)


def _seen(out: io.StringIO) -> set[tuple[str, str]]:
    return {(r["logger"], r["level"]) for r in map(json.loads, out.getvalue().splitlines())}


# (engineio.server and socketio.server are set to ERROR by mes.realtime itself: logger=False)
LIBRARIES = ("alembic.runtime.migration", "asyncua.server.address_space", "pymodbus.server", "engineio",
             "socketio", "werkzeug", "some.other.library")


def test_info_shows_our_info_and_only_the_libraries_warnings(console: io.StringIO) -> None:
    configure_logging("INFO")
    _emit_all()
    seen = _seen(console)
    for ours in ("mes.gateway", "devices.sim.opcua"):
        assert {(ours, "INFO"), (ours, "WARNING")} <= seen and (ours, "DEBUG") not in seen, seen
    for library in LIBRARIES:
        assert (library, "WARNING") in seen, seen
        assert (library, "INFO") not in seen and (library, "DEBUG") not in seen, seen


def test_debug_shows_everything(console: io.StringIO) -> None:
    configure_logging("DEBUG")
    _emit_all()
    seen = _seen(console)
    for name in ("mes.gateway", "devices.sim.opcua", *LIBRARIES):
        assert {(name, "DEBUG"), (name, "INFO"), (name, "WARNING")} <= seen, (name, seen)


def test_error_hides_warnings_too(console: io.StringIO) -> None:
    configure_logging("ERROR")
    _emit_all()
    assert _seen(console) == set()
    logging.getLogger("asyncua.server").error("an error")
    logging.getLogger("mes.jobs").error("an error")
    assert _seen(console) == {("asyncua.server", "ERROR"), ("mes.jobs", "ERROR")}
