"""LineTransport over loop://, a real pty and TCP loopback; SerialDriver helpers."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from datetime import timedelta
from typing import Any

import jsonschema
import pytest

from devices.errors import DeviceTimeout, DeviceUnavailable, ProtocolError
from devices.transport import LineTransport, SerialDriver, bits_per_character, serial_config_schema
from tests.devices.helpers import closed_tcp_port, run, wait_until


class Pty:
    """A raw pty pair: the test plays the device on the master side."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def hang_up(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def test_loop_url_round_trip_and_crlf_framing() -> None:
    async def body() -> None:
        link = LineTransport("loop://")
        await link.open()
        try:
            await link.write(b"A\rB\nC\r\nsecond\r\nrest")
            assert (await link.readline(2)).raw == b"A\rB\nC\r\n"  # lone CR / LF do not end a line
            assert (await link.readline(2)).raw == b"second\r\n"
            with pytest.raises(DeviceTimeout):
                await link.readline(0.05)  # "rest" has no terminator yet
            await link.write(b"\r\n")
            assert (await link.readline(2)).raw == b"rest\r\n"
        finally:
            await link.close()

    run(body())


def test_split_line_over_pty_is_reassembled_with_last_byte_time() -> None:
    async def body() -> None:
        pty = Pty()
        link = LineTransport(pty.path)
        await link.open()
        try:
            pty.send(b"S S    ")
            await asyncio.sleep(0.03)  # a real pause between pieces on the line
            before = time.monotonic()
            pty.send(b" 12.50 g\r\n")
            frame = await link.readline(2)
            assert frame.raw == b"S S     12.50 g\r\n"
            assert frame.monotonic >= before
            assert frame.timestamp.tzinfo is not None and frame.timestamp.utcoffset() == timedelta(0)
        finally:
            await link.close()
            pty.hang_up()

    run(body())


def test_disconnect_mid_line_drops_partial_and_raises() -> None:
    async def body() -> None:
        pty = Pty()
        link = LineTransport(pty.path)
        await link.open()
        try:
            pty.send(b"S S      1.00 g\r\nS S    ")
            first = await link.readline(2)
            assert first.raw == b"S S      1.00 g\r\n"
            pty.hang_up()
            with pytest.raises(DeviceUnavailable, match="link lost"):
                await link.readline(2)
            assert not link.is_open
            with pytest.raises(DeviceUnavailable):
                await link.write(b"SI\r\n")
        finally:
            await link.close()

    run(body())


def test_complete_frames_before_a_disconnect_are_still_delivered() -> None:
    async def body() -> None:
        pty = Pty()
        link = LineTransport(pty.path)
        await link.open()
        try:
            pty.send(b"one\r\ntwo\r\n")
            await asyncio.sleep(0)
            first = await link.readline(2)
            pty.hang_up()
            await wait_until(lambda: link._error is not None, what="the link noticing the hang-up")
            frames = [first.raw]
            while True:
                try:
                    frames.append((await link.readline(2)).raw)
                except DeviceUnavailable:
                    break
            assert frames == [b"one\r\n", b"two\r\n"]
        finally:
            await link.close()

    run(body())


def test_resync_on_open_drops_the_first_fragment() -> None:
    async def body() -> None:
        pty = Pty()
        link = LineTransport(pty.path, resync_on_open=True)
        await link.open()
        try:
            pty.send(b"00.00  g\r\nST,+00001.00  g\r\n")
            assert (await link.readline(2)).raw == b"ST,+00001.00  g\r\n"
        finally:
            await link.close()
            pty.hang_up()

    run(body())


def test_discard_frames_keeps_partial_line_discard_input_drops_it() -> None:
    async def body() -> None:
        link = LineTransport("loop://")
        await link.open()
        try:
            await link.write(b"old\r\npar")
            await link.readline(2)  # wait for the data to arrive
            await link.write(b"x\r\n")
            await wait_until(lambda: len(link._frames) == 1, what="the frame 'parx'")
            await link.write(b"tial")
            await wait_until(lambda: bytes(link._buffer) == b"tial", what="the partial line 'tial'")
            assert [f.raw for f in link.discard_frames()] == [b"parx\r\n"]
            await link.write(b"\r\n")
            assert (await link.readline(2)).raw == b"tial\r\n"
            await link.write(b"junk")
            await wait_until(lambda: bytes(link._buffer) == b"junk", what="the partial line 'junk'")
            assert [f.raw for f in link.discard_input()] == [b"junk"]
            await link.write(b"fresh\r\n")
            assert (await link.readline(2)).raw == b"fresh\r\n"
        finally:
            await link.close()

    run(body())


def test_runaway_line_becomes_one_bad_frame() -> None:
    async def body() -> None:
        link = LineTransport("loop://", max_line_bytes=16)
        await link.open()
        try:
            await link.write(b"x" * 40)
            frame = await link.readline(2)
            assert not frame.raw.endswith(b"\r\n")
        finally:
            await link.close()

    run(body())


def test_overflowing_queue_drops_oldest_and_counts() -> None:
    async def body() -> None:
        link = LineTransport("loop://", max_frames=3)
        await link.open()
        try:
            await link.write(b"".join(b"%d\r\n" % i for i in range(6)))
            await wait_until(lambda: link.frames_dropped == 3, what="three frames dropped")
            assert [f.raw for f in link.discard_frames()] == [b"3\r\n", b"4\r\n", b"5\r\n"]
            assert link.frames_dropped == 3
        finally:
            await link.close()

    run(body())


def test_wait_quiet_returns_frames_seen_until_the_line_is_idle() -> None:
    async def body() -> None:
        link = LineTransport("loop://")
        await link.open()
        try:
            await link.write(b"a\r\n")
            assert (await link.readline(2)).raw == b"a\r\n"
            await link.write(b"b\r\nc\r\n")
            seen = await link.wait_quiet(0.3, timeout=5)
            assert [f.raw for f in seen] == [b"b\r\n", b"c\r\n"]
            assert time.monotonic() - link.last_rx_monotonic >= 0.3
        finally:
            await link.close()

    run(body())


def test_tcp_close_is_prompt_and_peer_sees_eof() -> None:
    async def body() -> None:
        eof = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n")  # input is flushed on open: answer, don't greet
            writer.write(b"hello\r\n")
            await writer.drain()
            await reader.read()  # returns at EOF
            eof.set()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = LineTransport(f"socket://127.0.0.1:{port}")
        await link.open()
        await link.write(b"hi\r\n")
        assert (await link.readline(2)).raw == b"hello\r\n"
        started = time.monotonic()
        await link.close()
        assert time.monotonic() - started < 0.25  # pyserial's own close sleeps 0.3 s
        await asyncio.wait_for(eof.wait(), 5)
        await link.close()  # idempotent
        server.close()
        await server.wait_closed()

    run(body())


@pytest.mark.parametrize("url", ["/dev/no-such-scale", "socket://127.0.0.1:{port}", "nosuchscheme://x"])
def test_open_failure_is_device_unavailable(url: str) -> None:
    async def body() -> None:
        link = LineTransport(url.format(port=closed_tcp_port()))
        with pytest.raises(DeviceUnavailable) as info:
            await link.open()
        assert info.value.retryable
        await link.close()

    run(body())


def test_readline_on_closed_transport() -> None:
    async def body() -> None:
        link = LineTransport("loop://")
        with pytest.raises(DeviceUnavailable):
            await link.readline(0.1)

    run(body())


@pytest.mark.parametrize(
    ("bytesize", "parity", "stopbits", "bits"),
    [(8, "N", 1, 10), (7, "E", 1, 10), (8, "E", 1, 11), (8, "N", 2, 11)],
)
def test_bits_per_character(bytesize: int, parity: str, stopbits: float, bits: float) -> None:
    assert bits_per_character(bytesize, parity, stopbits) == bits
    link = LineTransport("loop://", baudrate=9600, bytesize=bytesize, parity=parity, stopbits=stopbits)
    assert link.character_time_s == pytest.approx(bits / 9600)


class _Serial(SerialDriver):
    name = "serial-probe"
    config_schema = serial_config_schema(title="probe")

    async def _connect(self) -> None: ...
    async def _identify(self) -> Any: ...
    async def _read_raw(self, stable: bool) -> Any: ...
    def _parse(self, raw: bytes) -> Any: ...


def test_serial_config_schema_and_defaults() -> None:
    schema = serial_config_schema(title="x", baudrate=2400, bytesize=7, parity="E")
    jsonschema.Draft202012Validator.check_schema(schema)
    driver = _Serial("S-1", {"port": "loop://"})
    assert driver.config["baudrate"] == 9600 and driver.config["parity"] == "N"
    assert schema["properties"]["baudrate"]["default"] == 2400
    with pytest.raises(DeviceUnavailable):
        driver.transport  # noqa: B018 - not connected


@pytest.mark.parametrize(
    "raw", [b"S S 1 g", b"S S \xb51 g\r\n", b"S S\x00 1 g\r\n", b"S S \x7f g\r\n"]
)
def test_decode_rejects_unterminated_non_ascii_and_control_bytes(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        _Serial("S-1", {"port": "loop://"})._decode(raw)
