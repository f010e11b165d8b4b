"""``mes sim opcua``: an OPC UA server (asyncua) simulating a packaging line.

The line follows the PackML state machine (:class:`PackMLMachine`): commands
Reset, Start, Stop, Hold, Unhold, Suspend, Unsuspend, Abort, Clear and the
Execute "state complete" move it between the PackTags states; every acting
("-ing") state completes by itself after ``acting_s``. While in Execute the
line makes one package every ``item_interval_s`` (``processed`` counts up,
every ``defect_every``-th is also ``defective``). A Hold carries a reason
code, published as ``StopReason`` until the line executes again. With
``auto=True`` the line cycles by itself: Stopped → Resetting → Idle →
Starting → Execute → Holding → Held (reason 101, 102, …) → Unholding →
Execute → … and, after ``batch_size`` packages, Completing → Complete →
Resetting → Idle.

Address space (namespace :data:`NAMESPACE_URI`, string node ids
``PackagingLine.<Folder>.<Name>``)::

    Objects/PackagingLine/Status/StateCurrent         Int32   PackML state number
    Objects/PackagingLine/Status/UnitModeCurrent      Int32   1 = Production
    Objects/PackagingLine/Status/CurMachSpeed         Float   packages per minute
    Objects/PackagingLine/Admin/ProdProcessedCount    Int32   packages
    Objects/PackagingLine/Admin/ProdDefectiveCount    Int32   packages
    Objects/PackagingLine/Admin/StopReason            Int32   hold/stop reason code
    Objects/PackagingLine/Process/SealTemperature     Double  °C

Security: ``secure=True`` adds a Basic256Sha256/SignAndEncrypt endpoint
(``allow_none`` keeps the unsecured one too) with a server certificate (made
with :func:`make_certificate` when none is given). With ``trust_dir`` only
client certificates found there are accepted (anything else is refused with
BadCertificateUntrusted); without it any valid client certificate is.

Serving is on 127.0.0.1 and an ephemeral port by default; the endpoint URL
is ``opc.tcp://127.0.0.1:PORT/open-mes/sim``. :meth:`OpcUaSimulator.go_away`
and :meth:`OpcUaSimulator.come_back` drop and restore the network side (the
address space and the machine keep running), to test reconnects cheaply:
building an asyncua server takes seconds.

From the shell (to be wired as ``mes sim opcua``)::

    python -m devices.sim.opcua --port 4840 [--secure [--pki DIR] [--trust DIR]] [--no-auto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import math
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devices.drivers.opcua import PackMLCommand, PackMLState
from devices.sim.runner import stop_on_signals, wait_for_stop

__all__ = [
    "NAMESPACE_URI",
    "SERVER_APPLICATION_URI",
    "VARIABLES",
    "CertificateFiles",
    "MachineSnapshot",
    "OpcUaSimulator",
    "PackMLMachine",
    "build_parser",
    "main",
    "make_certificate",
    "run",
]

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:open-mes:sim:packaging-line"
SERVER_APPLICATION_URI = "urn:open-mes:sim:opcua-server"
RESOURCE_PATH = "/open-mes/sim"

#: Simulated variables: name → (folder, browse name, variant type).
VARIABLES: dict[str, tuple[str, str, ua.VariantType]] = {
    "state": ("Status", "StateCurrent", ua.VariantType.Int32),
    "unit_mode": ("Status", "UnitModeCurrent", ua.VariantType.Int32),
    "speed": ("Status", "CurMachSpeed", ua.VariantType.Float),
    "processed": ("Admin", "ProdProcessedCount", ua.VariantType.Int32),
    "defective": ("Admin", "ProdDefectiveCount", ua.VariantType.Int32),
    "stop_reason": ("Admin", "StopReason", ua.VariantType.Int32),
    "temperature": ("Process", "SealTemperature", ua.VariantType.Double),
}

#: Units of the simulated variables (for driver configs).
UNITS: dict[str, str] = {
    "state": "1",
    "unit_mode": "1",
    "speed": "1/min",
    "processed": "pcs",
    "defective": "pcs",
    "stop_reason": "1",
    "temperature": "°C",
}

S = PackMLState
C = PackMLCommand

_RUNNING = (S.IDLE, S.STARTING, S.EXECUTE, S.COMPLETING, S.COMPLETE, S.RESETTING, S.HOLDING,
            S.HELD, S.UNHOLDING, S.SUSPENDING, S.SUSPENDED, S.UNSUSPENDING)
#: Command → {from state: to state} (PackML state model, 2015).
TRANSITIONS: dict[PackMLCommand, dict[PackMLState, PackMLState]] = {
    C.RESET: {S.STOPPED: S.RESETTING, S.COMPLETE: S.RESETTING},
    C.START: {S.IDLE: S.STARTING},
    C.STOP: {s: S.STOPPING for s in _RUNNING},
    C.HOLD: {S.EXECUTE: S.HOLDING, S.SUSPENDED: S.HOLDING},
    C.UNHOLD: {S.HELD: S.UNHOLDING},
    C.SUSPEND: {S.EXECUTE: S.SUSPENDING},
    C.UNSUSPEND: {S.SUSPENDED: S.UNSUSPENDING},
    C.ABORT: {s: S.ABORTING for s in S if s not in (S.ABORTING, S.ABORTED, S.UNDEFINED)},
    C.CLEAR: {S.ABORTED: S.CLEARING},
    C.COMPLETE: {S.EXECUTE: S.COMPLETING},
}
#: Acting state → the state it completes into.
STATE_COMPLETE: dict[PackMLState, PackMLState] = {
    S.CLEARING: S.STOPPED,
    S.STARTING: S.EXECUTE,
    S.STOPPING: S.STOPPED,
    S.ABORTING: S.ABORTED,
    S.HOLDING: S.HELD,
    S.UNHOLDING: S.EXECUTE,
    S.SUSPENDING: S.SUSPENDED,
    S.UNSUSPENDING: S.EXECUTE,
    S.RESETTING: S.IDLE,
    S.COMPLETING: S.COMPLETE,
}


@dataclass(frozen=True, slots=True)
class MachineSnapshot:
    """The machine's published values at one instant."""

    state: PackMLState
    unit_mode: int
    speed: float
    processed: int
    defective: int
    stop_reason: int
    temperature: float

    def values(self) -> dict[str, Any]:
        """Values by simulated variable name (see :data:`VARIABLES`)."""
        return {
            "state": int(self.state),
            "unit_mode": self.unit_mode,
            "speed": self.speed,
            "processed": self.processed,
            "defective": self.defective,
            "stop_reason": self.stop_reason,
            "temperature": self.temperature,
        }


class PackMLMachine:
    """A packaging machine: PackML states, counters, a seal temperature. Thread-safe."""

    def __init__(
        self,
        *,
        state: PackMLState = PackMLState.STOPPED,
        acting_s: float = 0.3,
        item_interval_s: float = 0.1,
        defect_every: int = 25,
        auto: bool = False,
        execute_s: float = 3.0,
        held_s: float = 1.0,
        batch_size: int = 0,
        hold_reasons: Sequence[int] = (101, 102, 103),
    ) -> None:
        if acting_s < 0 or item_interval_s <= 0 or defect_every < 0 or batch_size < 0:
            raise ValueError("acting_s >= 0, item_interval_s > 0, defect_every >= 0, batch_size >= 0")
        self.acting_s = acting_s
        self.item_interval_s = item_interval_s
        self.defect_every = defect_every
        self.auto = auto
        self.execute_s = execute_s
        self.held_s = held_s
        self.batch_size = batch_size
        self.hold_reasons = tuple(hold_reasons) or (1,)
        self._lock = threading.RLock()
        self._state = state
        self._in_state_s = 0.0
        self._item_s = 0.0
        self._batch = 0
        self._holds = 0
        self._clock = 0.0
        self.processed = 0
        self.defective = 0
        self.stop_reason = 0
        self.temperature_override: float | None = None

    @property
    def state(self) -> PackMLState:
        """The current PackML state."""
        return self._state

    def _enter(self, state: PackMLState) -> None:
        self._state = state
        self._in_state_s = 0.0
        if state is S.EXECUTE:
            self.stop_reason = 0
        if state is S.RESETTING:
            self._batch = 0

    def command(self, command: PackMLCommand, reason: int = 0) -> bool:
        """Apply a command; False (and no change) when the state does not accept it."""
        with self._lock:
            target = TRANSITIONS.get(PackMLCommand(command), {}).get(self._state)
            if target is None:
                return False
            if command in (C.HOLD, C.SUSPEND, C.STOP, C.ABORT):
                self.stop_reason = int(reason)
            self._enter(target)
            return True

    def tick(self, seconds: float) -> None:
        """Advance the machine by ``seconds`` of simulated time."""
        with self._lock:
            self._clock += seconds
            self._in_state_s += seconds
            state = self._state
            if state.acting:
                if self._in_state_s >= self.acting_s:
                    self._enter(STATE_COMPLETE[state])
                return
            if state is S.EXECUTE:
                self._item_s += seconds
                while self._item_s >= self.item_interval_s:
                    self._item_s -= self.item_interval_s
                    self.processed += 1
                    self._batch += 1
                    if self.defect_every and self.processed % self.defect_every == 0:
                        self.defective += 1
                if self.batch_size and self._batch >= self.batch_size:
                    self._enter(S.COMPLETING)
                    return
            if self.auto:
                self._auto_step()

    def _auto_step(self) -> None:
        state, elapsed = self._state, self._in_state_s
        if state in (S.STOPPED, S.COMPLETE) and elapsed >= self.held_s:
            self.command(C.RESET)
        elif state is S.ABORTED and elapsed >= self.held_s:
            self.command(C.CLEAR)
        elif state is S.IDLE and elapsed >= self.held_s:
            self.command(C.START)
        elif state is S.EXECUTE and elapsed >= self.execute_s:
            reason = self.hold_reasons[self._holds % len(self.hold_reasons)]
            self._holds += 1
            self.command(C.HOLD, reason)
        elif state is S.HELD and elapsed >= self.held_s:
            self.command(C.UNHOLD)
        elif state is S.SUSPENDED and elapsed >= self.held_s:
            self.command(C.UNSUSPEND)

    def snapshot(self) -> MachineSnapshot:
        """The values to publish now."""
        with self._lock:
            executing = self._state is S.EXECUTE
            if self.temperature_override is not None:
                temperature = self.temperature_override
            else:
                temperature = round(175.0 + (5.0 if executing else 0.0) + 0.5 * math.sin(self._clock), 3)
            return MachineSnapshot(
                state=self._state,
                unit_mode=1,
                speed=60.0 / self.item_interval_s if executing else 0.0,
                processed=self.processed,
                defective=self.defective,
                stop_reason=self.stop_reason,
                temperature=temperature,
            )


# --------------------------------------------------------------- certificates
@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A certificate (DER) and its private key (PEM, unencrypted)."""

    certificate: Path
    private_key: Path
    application_uri: str


def make_certificate(
    directory: Path | str,
    name: str,
    application_uri: str,
    *,
    server: bool = False,
    days: int = 30,
    key_size: int = 2048,
) -> CertificateFiles:
    """Create a self-signed OPC UA application instance certificate in ``directory``.

    Subject CN ``name``; SubjectAltName with ``application_uri`` (servers
    check it against the client's application URI), ``localhost``, this
    host's name and 127.0.0.1; key usages as OPC UA requires (signature,
    non-repudiation, key and data encipherment, certificate signing for a
    self-signed certificate); extended key usage client auth (and server auth
    for ``server``). Writes ``<name>.der`` and ``<name>.pem``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "open-mes")]
    )
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / f"{name}.der"
    key_path = folder / f"{name}.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return CertificateFiles(cert_path, key_path, application_uri)


# ------------------------------------------------------------------ simulator
class OpcUaSimulator:
    """An asyncua server publishing a :class:`PackMLMachine` (see module docstring)."""

    protocol: ClassVar[str] = "opcua"

    def __init__(
        self,
        machine: PackMLMachine | None = None,
        *,
        tick_s: float = 0.05,
        secure: bool = False,
        allow_none: bool = True,
        certificate: CertificateFiles | None = None,
        pki_dir: Path | str | None = None,
        trust_dir: Path | str | None = None,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be > 0")
        if not secure and not allow_none:
            raise ValueError("a server without security needs allow_none")
        self.machine = machine or PackMLMachine()
        self.tick_s = tick_s
        self.secure = secure
        self.allow_none = allow_none
        self.certificate = certificate
        self.pki_dir = Path(pki_dir) if pki_dir is not None else None
        self.trust_dir = Path(trust_dir) if trust_dir is not None else None
        self.host = "127.0.0.1"
        self.port = 0
        self.namespace_index = 0
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._published: dict[str, Any] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._online = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """The endpoint URL while serving."""
        return f"opc.tcp://{self.host}:{self.port}{RESOURCE_PATH}"

    def node_id(self, name: str) -> str:
        """String node id of a simulated variable, e.g. ``ns=2;s=PackagingLine.Status.StateCurrent``."""
        folder, browse, _ = VARIABLES[name]
        return f"ns={self.namespace_index};s=PackagingLine.{folder}.{browse}"

    def browse_path(self, name: str, alias: str | None = None) -> str:
        """Browse path from Root, with the namespace as index or as ``alias``."""
        folder, browse, _ = VARIABLES[name]
        ns = alias or str(self.namespace_index)
        return f"Objects/{ns}:PackagingLine/{ns}:{folder}/{ns}:{browse}"

    def driver_config(
        self, names: Sequence[str] | None = None, *, packml: bool = True, **extra: Any
    ) -> dict[str, Any]:
        """A ready :class:`~devices.drivers.opcua.OpcUaDriver` config for this simulator."""
        chosen = list(names) if names is not None else list(VARIABLES)
        config: dict[str, Any] = {
            "url": self.url,
            "nodes": {n: {"node_id": self.node_id(n), "unit": UNITS[n]} for n in chosen},
        }
        if packml and {"state", "processed", "defective"} <= set(chosen):
            config["packml"] = {"state": "state", "processed": "processed", "defective": "defective"}
            if "stop_reason" in chosen:
                config["packml"]["stop_reason"] = "stop_reason"
        config.update(extra)
        return config

    @property
    def server_certificate(self) -> Path | None:
        """The server's certificate (DER) when serving securely."""
        return self.certificate.certificate if self.certificate else None

    # -------------------------------------------------------------- serving
    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Build the address space and serve on ``host:port`` (0 = a free port); return :attr:`url`."""
        if self._server is not None:
            raise RuntimeError("simulator already serving")
        server = Server()
        await server.init()
        server.set_server_name("open-mes packaging line simulator")
        await server.set_application_uri(SERVER_APPLICATION_URI)
        server.product_uri = "urn:open-mes:sim"
        server.manufacturer_name = "open-mes"
        server.set_endpoint(f"opc.tcp://{host}:{port}{RESOURCE_PATH}")
        await self._setup_security(server)
        await server.set_build_info(
            product_uri="urn:open-mes:sim",
            manufacturer_name="open-mes",
            product_name="Packaging line simulator",
            software_version="1.0",
            build_number="1",
            build_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        )
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        await self._build_address_space(server)
        await server.start()
        assert server.bserver is not None
        self.host, self.port = server.bserver.hostname, server.bserver.port
        self._fix_endpoint_urls(server)
        self._server = server
        self._online = True
        self._published.clear()
        await self.publish()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop(), name="opcua-sim-tick")
        return self.url

    async def start_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Alias of :meth:`start` (so :class:`~devices.sim.SimulatorThread` can run it)."""
        return await self.start(port, host)

    async def _setup_security(self, server: Server) -> None:
        server.set_identity_tokens([ua.AnonymousIdentityToken])  # applications authenticate by certificate
        if not self.secure:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            return
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        if self.allow_none:
            policies.insert(0, ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        if self.certificate is None:
            folder = self.pki_dir
            if folder is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="mes-sim-opcua-")
                folder = Path(self._tmp.name)
            self.certificate = make_certificate(folder, "sim-server", SERVER_APPLICATION_URI, server=True)
        await server.load_certificate(str(self.certificate.certificate))
        await server.load_private_key(str(self.certificate.private_key))
        options = CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        store = None
        if self.trust_dir is not None:
            self.trust_dir.mkdir(parents=True, exist_ok=True)
            store = TrustStore([self.trust_dir], [])
            await store.load()
            options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options, store))

    async def _build_address_space(self, server: Server) -> None:
        idx = self.namespace_index
        line = await server.nodes.objects.add_object(
            ua.NodeId(ua.String("PackagingLine"), ua.Int16(idx)), ua.QualifiedName("PackagingLine", idx)
        )
        folders: dict[str, Node] = {}
        initial = self.machine.snapshot().values()
        for name, (folder, browse, vtype) in VARIABLES.items():
            if folder not in folders:
                folders[folder] = await line.add_object(
                    ua.NodeId(ua.String(f"PackagingLine.{folder}"), ua.Int16(idx)), ua.QualifiedName(folder, idx)
                )
            self._nodes[name] = await folders[folder].add_variable(
                ua.NodeId(ua.String(f"PackagingLine.{folder}.{browse}"), ua.Int16(idx)),
                ua.QualifiedName(browse, idx),
                ua.Variant(initial[name], vtype),
            )

    def _fix_endpoint_urls(self, server: Server) -> None:
        """With port 0 asyncua advertises ':0'; advertise the bound port instead."""
        server.endpoint = urlparse(self.url)
        for endpoint in server.iserver.endpoints:
            endpoint.EndpointUrl = self.url
            endpoint.Server.DiscoveryUrls = [self.url]

    async def publish(self) -> None:
        """Write the machine's values that changed since the last publish."""
        server = self._server
        if server is None:
            return
        for name, value in self.machine.snapshot().values().items():
            if self._published.get(name) == value and name in self._published:
                continue
            vtype = VARIABLES[name][2]
            if vtype is ua.VariantType.Int32 and isinstance(value, int):
                value = (value + 2**31) % 2**32 - 2**31  # a PLC's Int32 counter wraps past 2^31 - 1
            await server.write_attribute_value(self._nodes[name].nodeid, ua.DataValue(ua.Variant(value, vtype)))
            self._published[name] = value

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.machine.tick(now - last)
            last = now
            try:
                await self.publish()
            except Exception:  # keep ticking; a failed write is logged, not fatal
                log.exception("opcua simulator: publishing failed")

    async def command(self, command: PackMLCommand, reason: int = 0) -> bool:
        """Apply a PackML command now and publish; False when the state refuses it."""
        accepted = self.machine.command(command, reason)
        await self.publish()
        return accepted

    async def go_away(self) -> None:
        """Close the listener and every client connection (the line keeps running)."""
        server = self._server
        if server is None or not self._online or server.bserver is None:
            return
        self._online = False
        await server.bserver.stop()

    async def come_back(self) -> None:
        """Listen again on the same port after :meth:`go_away`."""
        server = self._server
        if server is None or self._online or server.bserver is None:
            return
        await server.bserver.start()
        self._online = True

    async def stop(self) -> None:
        """Stop serving and release everything."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(BaseException):
                await ticker
        server, self._server = self._server, None
        self._online = False
        if server is not None:
            await server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @contextlib.asynccontextmanager
    async def serve(self, port: int = 0, host: str = "127.0.0.1") -> AsyncIterator[OpcUaSimulator]:
        """``async with sim.serve():`` – start, yield, always stop."""
        await self.start(port, host)
        try:
            yield self
        finally:
            await self.stop()


# ------------------------------------------------------------------------ CLI
def build_parser(prog: str = "mes sim opcua") -> argparse.ArgumentParser:
    """The argument parser (exposed so the ``mes`` CLI can embed it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulate a packaging line (PackML state machine and OEE counters) as an OPC UA server.",
    )
    parser.add_argument("--port", type=int, default=4840, help="TCP port (0 = any free port; default 4840)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--secure", action="store_true", help="add a Basic256Sha256/SignAndEncrypt endpoint")
    parser.add_argument("--secure-only", action="store_true", help="with --secure: no unsecured endpoint")
    parser.add_argument("--pki", type=Path, help="with --secure: keep the server certificate here")
    parser.add_argument("--trust", type=Path, help="with --secure: accept only client certificates in this folder")
    parser.add_argument("--no-auto", action="store_true", help="do not cycle the line by itself (stays Stopped)")
    parser.add_argument("--item-interval", type=float, default=0.5, help="seconds per package in Execute")
    parser.add_argument("--tick", type=float, default=0.1, help="seconds between updates")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Serve as ``args`` say until interrupted, ``stop`` is set or ``args.duration`` passes."""
    machine = PackMLMachine(auto=not args.no_auto, item_interval_s=args.item_interval, acting_s=1.0,
                            execute_s=20.0, held_s=5.0)
    sim = OpcUaSimulator(
        machine,
        tick_s=args.tick,
        secure=args.secure,
        allow_none=not args.secure_only,
        pki_dir=args.pki,
        trust_dir=args.trust,
    )
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        await sim.start(args.port, args.host)
        security = "None"
        if args.secure:
            security = ("" if args.secure_only else "None + ") + "Basic256Sha256/SignAndEncrypt"
        print(f"opcua simulator listening on {sim.url} (security: {security})", flush=True)
        print(f"  namespace {NAMESPACE_URI} = ns={sim.namespace_index}; state node {sim.node_id('state')}", flush=True)
        if sim.server_certificate is not None:
            trust = f"trust list {args.trust}" if args.trust else "any valid client certificate accepted"
            print(f"  server certificate {sim.server_certificate}; {trust}", flush=True)
        try:
            await wait_for_stop(stop, args.duration)
        finally:
            await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``mes sim opcua``); returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0 … 65535")
    if not args.secure and (args.pki or args.trust or args.secure_only):
        parser.error("--pki, --trust and --secure-only need --secure")
    if args.item_interval <= 0 or args.tick <= 0:
        parser.error("--item-interval and --tick must be > 0")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"mes sim opcua: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
