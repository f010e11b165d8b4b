"""OPC UA servers (packaging lines, PLCs, SCADA gateways) through an asyncua client.

A device is a server URL plus named *nodes*, each given by node id or by
browse path::

    {
      "url": "opc.tcp://192.0.2.20:4840",
      "namespaces": {"line": "urn:example:packaging-line"},
      "nodes": {
        "speed":     {"node_id": "nsu=urn:example:packaging-line;s=Line.Speed", "unit": "1/min", "decimals": 1},
        "state":     {"path": "Objects/line:Line/line:Status/line:StateCurrent", "unit": "1"},
        "processed": {"path": "Objects/line:Line/line:Admin/line:ProdProcessedCount", "unit": "pcs"},
        "defective": {"path": "Objects/line:Line/line:Admin/line:ProdDefectiveCount", "unit": "pcs"}
      },
      "packml": {"state": "state", "processed": "processed", "defective": "defective"},
      "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                   "certificate": "/etc/mes/pki/client.der", "private_key": "/etc/mes/pki/client.pem",
                   "server_certificate": "/etc/mes/pki/line-server.der"}
    }

Node ids use the OPC UA string form (``ns=2;s=…``, ``i=2258``) or
``nsu=<namespace uri>;…``, resolved against the server's namespace array.
Browse paths start at the Root folder; each element is ``<ns>:<BrowseName>``
where ``<ns>`` is a namespace index or an alias from ``namespaces`` (no
prefix: namespace 0). Every node is resolved and checked at connect; a node
that does not exist fails the connect with
:class:`~devices.errors.ProtocolError`.

Values
------
Numeric variants become :class:`~decimal.Decimal`: integers exactly, a
Float as the shortest decimal that reads back as the same float32, a Double
likewise for float64, a Boolean as 0/1; ``decimals`` then quantises, half to
even. A Bad or Uncertain status code, NaN, or ±infinity is a reading without
value (status ``fault``, ``fault``, ``overload``/``underload``). Strings and
arrays are refused (:class:`~devices.errors.ProtocolError`). ``Reading.raw``
is the OPC UA binary encoding of the DataValue as received (value, status
code, source and server timestamps); ``timestamp``/``monotonic`` are the
time of receipt.

API beyond :meth:`read` (the ``primary`` node): :meth:`OpcUaDriver.read_nodes`
(one Read service call), :meth:`OpcUaDriver.subscribe` (data changes as
``(name, Reading)``, surviving reconnects), :meth:`OpcUaDriver.read_packml`
(PackML state and OEE counters), :meth:`OpcUaDriver.resolve` and
:meth:`OpcUaDriver.browse`. ``stream()`` yields the primary node's data
changes, plus a fresh read whenever nothing changed for ``heartbeat_s``
(so a quiet stream still proves the link is alive).

Security and errors
-------------------
With ``security`` the channel uses Basic256Sha256 with SignAndEncrypt (or
Sign) and the given client certificate; pin the server certificate with
``server_certificate`` (without it the certificate the server presents is
used, which is trust on first use). A server that refuses the client
certificate (not in its trust list, expired, wrong application URI …)
raises :class:`SecurityRejected` (a :class:`~devices.errors.DeviceFault`,
not retryable) naming the certificate and what to do. A refused or lost
connection is :class:`~devices.errors.DeviceUnavailable`, no answer in
``timeout_s`` :class:`~devices.errors.DeviceTimeout`.

After the link goes away the driver reconnects in the background with
exponential backoff (``reconnect_initial_s`` doubling up to
``reconnect_max_s``, ±10 % jitter), re-resolves the nodes and re-creates
every live subscription; meanwhile reads fail fast with
DeviceUnavailable and :meth:`OpcUaDriver.wait_connected` waits for the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import logging
import math
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from asyncua import Client, ua
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.common.utils import Buffer
from asyncua.crypto import security_policies
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devices.base import Capability, Frame, utc_now
from devices.errors import (
    ConfigurationError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    ProtocolError,
)
from devices.network import RECONNECT_SCHEMA, NetworkDriver, float_to_decimal, quiet_library_logs
from devices.reading import DeviceIdentity, Reading, ReadingStatus, Sample

__all__ = [
    "BrowsedNode",
    "NodeSpec",
    "NodeSubscription",
    "OpcUaDriver",
    "PackMLCommand",
    "PackMLState",
    "PackMLStatus",
    "SecurityRejected",
    "decode_datavalue",
    "encode_datavalue",
    "sample_from_datavalue",
    "unsigned_counter",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------- PackML
class PackMLState(enum.IntEnum):
    """PackML machine states with their PackTags ``StateCurrent`` numbers (ISA-TR88.00.02)."""

    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17

    @property
    def acting(self) -> bool:
        """True for the transient "-ing" states that end by themselves (state complete)."""
        return self in _ACTING

    @property
    def label(self) -> str:
        """The PackML display name, e.g. ``"Execute"``."""
        return self.name.capitalize()


_ACTING = frozenset(
    {
        PackMLState.CLEARING, PackMLState.STARTING, PackMLState.STOPPING, PackMLState.ABORTING,
        PackMLState.HOLDING, PackMLState.UNHOLDING, PackMLState.SUSPENDING,
        PackMLState.UNSUSPENDING, PackMLState.RESETTING, PackMLState.COMPLETING,
    }
)


class PackMLCommand(enum.IntEnum):
    """PackML commands with their PackTags ``CntrlCmd`` numbers."""

    UNDEFINED = 0
    RESET = 1
    START = 2
    STOP = 3
    HOLD = 4
    UNHOLD = 5
    SUSPEND = 6
    UNSUSPEND = 7
    ABORT = 8
    CLEAR = 9
    COMPLETE = 10


@dataclass(frozen=True, slots=True)
class PackMLStatus:
    """PackML state and OEE counters read in one Read call.

    ``processed`` and ``defective`` are the machine's counters (pieces),
    ``stop_reason`` the machine's stop/hold reason code (None when not
    configured), ``readings`` the underlying readings by role (``state``,
    ``processed``, ``defective``, ``stop_reason``), for the record.
    """

    state: PackMLState
    processed: int
    defective: int
    stop_reason: int | None
    readings: dict[str, Reading]

    @property
    def good(self) -> int:
        """Processed minus defective (the quality numerator of OEE)."""
        return self.processed - self.defective

    @property
    def timestamp(self) -> datetime:
        """Receipt time of the read (UTC)."""
        return self.readings["state"].timestamp


# ------------------------------------------------------------------ errors
class SecurityRejected(DeviceFault):
    """The server refused the secure channel or session (certificate not trusted …).

    Not retryable: somebody has to change a trust list or a certificate.
    ``status`` is the OPC UA status name when the server gave one.
    """

    retryable = False

    def __init__(self, message: str, *, status: str | None = None, device_id: str | None = None) -> None:
        super().__init__(message, device_id=device_id)
        self.status = status


_SECURITY_STATUSES = frozenset(
    {
        "BadCertificateUntrusted", "BadCertificateInvalid", "BadCertificateTimeInvalid",
        "BadCertificateIssuerTimeInvalid", "BadCertificateUriInvalid", "BadCertificateUseNotAllowed",
        "BadCertificateIssuerUseNotAllowed", "BadCertificateRevoked", "BadCertificateIssuerRevoked",
        "BadCertificateRevocationUnknown", "BadCertificateIssuerRevocationUnknown",
        "BadCertificateChainIncomplete", "BadCertificateHostNameInvalid", "BadSecurityChecksFailed",
        "BadSecurityPolicyRejected", "BadSecurityModeRejected", "BadIdentityTokenRejected",
        "BadIdentityTokenInvalid", "BadUserAccessDenied", "BadApplicationSignatureInvalid",
        "BadNoValidCertificates", "BadNonceInvalid", "BadCertificatePolicyCheckFailed",
    }
)
_LINK_STATUSES = frozenset(
    {
        "BadSessionClosed", "BadSessionIdInvalid", "BadSessionNotActivated", "BadSecureChannelClosed",
        "BadSecureChannelIdInvalid", "BadConnectionClosed", "BadServerNotConnected",
        "BadCommunicationError", "BadServerHalted", "BadShutdown", "BadDisconnect",
        "BadNotConnected", "BadConnectionRejected",
    }
)
_BUSY_STATUSES = frozenset({"BadTooManySessions", "BadServerTooBusy", "BadResourceUnavailable", "BadTooManyOperations"})
_TIMEOUT_STATUSES = frozenset({"BadTimeout", "BadRequestTimeout"})
_CONFIG_STATUSES = frozenset(
    {"BadNodeIdUnknown", "BadNodeIdInvalid", "BadNoMatch", "BadBrowseNameInvalid", "BadAttributeIdInvalid"}
)


_GOOD = ua.StatusCode(ua.UInt32(0))


def _status_name(code: int) -> str:
    try:
        return ua.StatusCode(ua.UInt32(code)).name
    except Exception:  # an unknown code still gets a readable name
        return f"0x{code:08X}"


# -------------------------------------------------------------- conversions
#: Decimal precision for rounding: enough for any finite double, nothing rounds silently.
_PRECISION = 800


_INTEGER_VARIANTS = frozenset(
    {
        ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
        ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
    }
)


#: Bits of the signed integer types a PLC may hold a PackTags counter in.
_SIGNED_BITS = {ua.VariantType.SByte: 8, ua.VariantType.Int16: 16, ua.VariantType.Int32: 32,
                ua.VariantType.Int64: 64}


def unsigned_counter(value: int, raw: bytes, role: str, device_id: str | None = None) -> int:
    """A negative PackTags counter read as the unsigned value the PLC meant.

    PackTags counters (``ProdProcessedCount`` ...) are Int32: past 2^31 - 1 pieces the PLC's
    counter wraps to negative numbers while it goes on counting. Read from a signed integer
    type, ``value`` is taken modulo 2^bits; a negative value of any other type is a
    ProtocolError.
    """
    try:
        vtype = decode_datavalue(raw).Value.VariantType
    except (ValueError, AttributeError):
        vtype = None
    bits = _SIGNED_BITS.get(vtype) if vtype is not None else None
    if bits is None or value < -(2 ** (bits - 1)):
        raise ProtocolError(f"PackML {role} counter is negative", device_id=device_id, raw=raw)
    return value + 2**bits


def encode_datavalue(datavalue: ua.DataValue) -> bytes:
    """OPC UA binary encoding of a DataValue (what :attr:`Reading.raw` holds)."""
    return bytes(struct_to_binary(datavalue))


def decode_datavalue(raw: bytes) -> ua.DataValue:
    """Decode :func:`encode_datavalue` output; ValueError unless it is exactly one DataValue."""
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise ValueError("empty frame")
    buffer = Buffer(bytes(raw))
    try:
        datavalue = struct_from_binary(ua.DataValue, buffer)
    except Exception as exc:
        raise ValueError(f"not an OPC UA DataValue: {type(exc).__name__}: {exc}") from None
    if len(buffer) != 0:
        raise ValueError(f"{len(buffer)} byte(s) after the DataValue")
    return datavalue


def sample_from_datavalue(datavalue: ua.DataValue, unit: str, decimals: int | None = None) -> Sample:
    """Turn a DataValue into a Sample (pure; ProtocolError for a non-numeric value)."""
    status = datavalue.StatusCode or _GOOD
    if not status.is_good():
        return Sample(ReadingStatus.FAULT, None, unit)
    variant = datavalue.Value
    if variant is None or variant.Value is None:
        raise ProtocolError("DataValue without a value")
    if variant.is_array or isinstance(variant.Value, (list, tuple)):
        raise ProtocolError(f"array values are not supported ({variant.VariantType.name})")
    vtype, value = variant.VariantType, variant.Value
    if vtype is ua.VariantType.Boolean:
        number = Decimal(1 if value else 0)
    elif vtype in _INTEGER_VARIANTS:
        number = Decimal(int(value))
    elif vtype in (ua.VariantType.Float, ua.VariantType.Double):
        if math.isnan(value):
            return Sample(ReadingStatus.FAULT, None, unit)
        if math.isinf(value):
            return Sample(ReadingStatus.OVERLOAD if value > 0 else ReadingStatus.UNDERLOAD, None, unit)
        number = float_to_decimal(float(value), single=vtype is ua.VariantType.Float)
    else:
        raise ProtocolError(f"{vtype.name} value is not numeric")
    if decimals is not None:
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            number = number.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    return Sample(ReadingStatus.OK, number, unit)


# ------------------------------------------------------------------- config
@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One configured node: how to find it and how to present its value."""

    name: str
    node_id: str | None
    path: str | None
    unit: str
    decimals: int | None = None

    @property
    def ref(self) -> str:
        """The node id or browse path as configured."""
        return self.node_id if self.node_id is not None else f"path {self.path}"


@dataclass(frozen=True, slots=True)
class BrowsedNode:
    """One child found by :meth:`OpcUaDriver.browse`."""

    browse_name: str  #: "<ns>:<Name>"
    node_id: str
    node_class: str
    display_name: str


_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
_NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["unit"],
    "properties": {
        "node_id": {"type": "string", "minLength": 1, "description": "ns=2;s=…, i=…, nsu=<uri>;s=…"},
        "path": {"type": "string", "minLength": 1, "description": "browse path from Root: Objects/2:Line/2:Speed"},
        "unit": {"type": "string", "minLength": 1, "maxLength": 32},
        "decimals": {"type": "integer", "minimum": 0, "maximum": 12},
    },
    "oneOf": [{"required": ["node_id"]}, {"required": ["path"]}],
}
_FILE = {"type": "string", "minLength": 1}
#: What a node id string looks like (anything else is taken as a browse path).
_NODE_ID_RE = re.compile(r"^(nsu=[^;]+;|ns=\d+;)?[isgb]=")


def _certificate(path: str) -> x509.Certificate:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _first_certificate(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry the chain behind it."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return bytes(der[: int.from_bytes(der[2:4], "big") + 4])
    return bytes(der)


def _thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 thumbprint, as OPC UA tools show it to identify a certificate."""
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()


def _describe_certificate(path: str) -> str:
    try:
        cert = _certificate(path)
    except Exception:  # unreadable: say which file
        return path
    return f"{cert.subject.rfc4514_string()} (thumbprint {_thumbprint(cert)}, {path})"


# ------------------------------------------------------------- subscription
_END = object()


class NodeSubscription:
    """Data changes of some nodes as ``(name, Reading)``; use ``async with`` + ``async for``.

    Created by :meth:`OpcUaDriver.subscribe`. The OPC UA subscription is
    re-created on every reconnect (the server then sends the current values
    again). Readings get the driver's sequence numbers in the order they are
    consumed. When more than ``queue_size`` changes wait, the oldest are
    dropped and counted in :attr:`dropped`. Iteration ends when the
    subscription or the driver is closed.
    """

    def __init__(
        self,
        driver: OpcUaDriver,
        names: Sequence[str],
        *,
        publishing_interval_ms: float,
        queue_size: int,
    ) -> None:
        self.driver = driver
        self.names = tuple(dict.fromkeys(names))
        self.publishing_interval_ms = publishing_interval_ms
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._subscription: Subscription | None = None
        self._by_node: dict[str, list[str]] = {}
        self._closed = False
        #: Set each time the subscription is (re-)created on the server.
        self.attached = asyncio.Event()
        self.attachments = 0

    # -------------------------------------------------------- asyncua hooks
    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """asyncua handler: queue the DataValue as received, stamped now."""
        frame = Frame.now(encode_datavalue(data.monitored_item.Value))
        for name in self._by_node.get(node.nodeid.to_string(), ()):
            self._put((name, frame))

    def status_change_notification(self, status: Any) -> None:
        """asyncua handler: the server ended or lost the subscription (reconnect follows)."""
        log.info("%s: subscription status change %s", self.driver.device_id, status)

    def _put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                    self.dropped += 1

    # ------------------------------------------------------------ lifecycle
    async def _attach(self, client: Client, node_ids: Mapping[str, ua.NodeId]) -> None:
        """Create the server-side subscription on ``client`` (after connect/reconnect)."""
        self._subscription = None
        self._by_node = {}
        for name in self.names:
            self._by_node.setdefault(node_ids[name].to_string(), []).append(name)
        subscription = await client.create_subscription(self.publishing_interval_ms, self)
        nodes = [client.get_node(ua.NodeId.from_string(key)) for key in self._by_node]
        results = await subscription.subscribe_data_change(nodes, queuesize=10)
        outcomes = results if isinstance(results, list) else [results]
        if len(outcomes) != len(self._by_node):
            raise ProtocolError(f"asked to monitor {len(self._by_node)} nodes, got {len(outcomes)} results",
                                device_id=self.driver.device_id)
        for key, result in zip(self._by_node, outcomes, strict=True):
            if isinstance(result, ua.StatusCode):
                raise ProtocolError(
                    f"cannot monitor {key}: {result.name}", device_id=self.driver.device_id
                )
        self._subscription = subscription
        self.attachments += 1
        self.attached.set()

    async def _detach(self) -> None:
        subscription, self._subscription = self._subscription, None
        self.attached.clear()
        if subscription is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.delete(), 2.0)

    def _end(self) -> None:
        self._closed = True
        self._put(_END)

    async def close(self) -> None:
        """Delete the subscription and end the iteration."""
        if self._closed:
            return
        self.driver._subscriptions.discard(self)
        self._end()
        await self._detach()

    async def __aenter__(self) -> NodeSubscription:
        await self.driver._start_subscription(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ iteration
    def __aiter__(self) -> NodeSubscription:
        return self

    async def __anext__(self) -> tuple[str, Reading]:
        item = await self._queue.get()
        if item is _END:
            self._put(_END)  # keep ending for later callers
            raise StopAsyncIteration
        name, frame = item
        spec = self.driver.nodes[name]
        sample = self.driver._node_sample(spec, frame.raw)
        return name, self.driver._reading_from(frame, sample)

    async def next(self, timeout: float | None = None) -> tuple[str, Reading]:
        """The next change, or DeviceTimeout after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except TimeoutError:
            raise DeviceTimeout(
                f"no data change within {timeout:g} s", device_id=self.driver.device_id
            ) from None
        except StopAsyncIteration:
            raise DeviceUnavailable("subscription closed", device_id=self.driver.device_id) from None

    async def _next_frame(self, timeout: float) -> Frame | None:
        """For stream(): the next queued frame within ``timeout`` s, else None."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is _END:
            self._put(_END)
            raise DeviceUnavailable("stream subscription closed", device_id=self.driver.device_id)
        frame: Frame = item[1]
        return frame


# -------------------------------------------------------------------- driver
class OpcUaDriver(NetworkDriver):
    """An OPC UA server read as named nodes (see module docstring)."""

    name: ClassVar[str] = "opcua"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ, Capability.STREAM})
    config_schema: ClassVar[dict[str, Any]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "OPC UA server",
        "type": "object",
        "additionalProperties": False,
        "required": ["url", "nodes"],
        "properties": {
            "url": {"type": "string", "pattern": r"^opc\.tcp://[^/\s]+(/\S*)?$"},
            "nodes": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": _NAME},
                "additionalProperties": _NODE_SCHEMA,
            },
            "primary": {"type": "string", "pattern": _NAME, "description": "node read() returns"},
            "namespaces": {
                "type": "object",
                "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$"},
                "additionalProperties": {"type": "string", "minLength": 1},
                "default": {},
                "description": "aliases for namespace URIs, usable in browse paths",
            },
            "packml": {
                "type": "object",
                "additionalProperties": False,
                "required": ["state", "processed", "defective"],
                "properties": {
                    "state": {"type": "string", "pattern": _NAME},
                    "processed": {"type": "string", "pattern": _NAME},
                    "defective": {"type": "string", "pattern": _NAME},
                    "stop_reason": {"type": "string", "pattern": _NAME},
                },
                "description": "which nodes hold the PackML state and OEE counters",
            },
            "security": {
                "type": "object",
                "additionalProperties": False,
                "required": ["certificate", "private_key"],
                "properties": {
                    "policy": {"type": "string", "enum": ["Basic256Sha256"], "default": "Basic256Sha256"},
                    "mode": {"type": "string", "enum": ["SignAndEncrypt", "Sign"], "default": "SignAndEncrypt"},
                    "certificate": _FILE,
                    "private_key": _FILE,
                    "private_key_password": {"type": "string"},
                    "server_certificate": _FILE,
                    "application_uri": {"type": "string", "minLength": 1},
                },
            },
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 4.0},
            "stable_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 10.0},
            "publishing_interval_ms": {"type": "number", "minimum": 0, "maximum": 3600000, "default": 100},
            "queue_size": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 10000},
            "heartbeat_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "default": 1.0,
                "description": "stream(): read the value when nothing changed for this long",
            },
            "watchdog_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "default": 1.0,
                "description": "how often the client checks an idle connection",
            },
            **RECONNECT_SCHEMA,
            "serial_number": {"type": "string", "minLength": 1},
        },
    }
    example_config: ClassVar[dict[str, Any]] = {
        "url": "opc.tcp://192.0.2.20:4840",
        "nodes": {
            "state": {"node_id": "ns=2;s=PackagingLine.Status.StateCurrent", "unit": "1"},
            "processed": {"node_id": "ns=2;s=PackagingLine.Admin.ProdProcessedCount", "unit": "pcs"},
            "defective": {"node_id": "ns=2;s=PackagingLine.Admin.ProdDefectiveCount", "unit": "pcs"},
        },
        "packml": {"state": "state", "processed": "processed", "defective": "defective"},
    }
    default_timeout_s: ClassVar[float] = 4.0

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Schema validation plus cross-references (primary, packml, aliases)."""
        filled = super().validate_config(config)
        nodes = filled["nodes"]
        wanted = {"primary": filled.get("primary")} | {
            f"packml.{k}": v for k, v in (filled.get("packml") or {}).items()
        }
        for where, name in wanted.items():
            if name is not None and name not in nodes:
                raise ConfigurationError(f"{where}: {name!r} is not among the nodes: {', '.join(nodes)}")
        for name, spec in nodes.items():
            path = spec.get("path")
            if path is not None:
                _split_path(path, filled["namespaces"], where=f"node {name!r}")
        return filled

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self.nodes: dict[str, NodeSpec] = {
            name: NodeSpec(name, spec.get("node_id"), spec.get("path"), spec["unit"], spec.get("decimals"))
            for name, spec in self.config["nodes"].items()
        }
        self.primary: NodeSpec = self.nodes[self.config.get("primary") or next(iter(self.nodes))]
        security = self.config.get("security")
        self.security: dict[str, Any] | None = None
        if security is not None:
            self.security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", **security}
        self._client: Client | None = None
        self._node_ids: dict[str, ua.NodeId] = {}
        self._namespace_array: list[str] = []
        self._generation = itertools.count(1)
        self._current_generation = 0
        self._subscriptions: set[NodeSubscription] = set()
        self._stream_sub: NodeSubscription | None = None

    # ------------------------------------------------------------- link state
    @property
    def url(self) -> str:
        """The server URL."""
        return str(self.config["url"])

    @property
    def endpoint(self) -> str:
        """The server URL (for messages)."""
        return self.url

    async def _new_client(self) -> Client:
        client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=float(self.config["watchdog_s"]))
        client.session_timeout = 600_000
        client.name = client.description = f"open-mes {self.device_id}"
        sec = self.security
        if sec is not None:
            for key in ("certificate", "private_key", "server_certificate"):
                if key in sec and not Path(sec[key]).is_file():
                    raise ConfigurationError(f"security.{key}: no such file {sec[key]}", device_id=self.device_id)
            uri = sec.get("application_uri") or self._certificate_uri(sec["certificate"])
            client.application_uri = uri
            if "server_certificate" not in sec:
                log.warning(
                    "%s: server certificate not pinned; trusting the one %s presents", self.device_id, self.url
                )
            mode = getattr(ua.MessageSecurityMode, sec["mode"])
            try:
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    certificate=sec["certificate"],
                    private_key=sec["private_key"],
                    private_key_password=sec.get("private_key_password"),
                    server_certificate=sec.get("server_certificate"),
                    mode=mode,
                )
            except FileNotFoundError as exc:
                raise ConfigurationError(f"security: {exc}", device_id=self.device_id) from exc
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"security: cannot load certificate or key: {exc}", device_id=self.device_id
                ) from exc
            except ua.UaError as exc:
                if "No matching endpoints" in str(exc):
                    raise SecurityRejected(
                        f"{self.url} offers no {sec['policy']}/{sec['mode']} endpoint",
                        device_id=self.device_id,
                    ) from exc
                raise
        return client

    @staticmethod
    def _certificate_uri(path: str) -> str:
        """The application URI in the certificate's SubjectAltName (what servers check)."""
        try:
            cert = _certificate(path)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        except FileNotFoundError:
            raise
        except Exception:
            uris = []
        return uris[0] if uris else "urn:open-mes:device-client"

    def _connect_error(self, exc: BaseException, phase: str) -> DeviceError:
        """Map a failure while connecting to the device exception tree."""
        if isinstance(exc, DeviceError):
            return exc
        secured = self.security is not None
        if isinstance(exc, ua.UaStatusCodeError):
            name = _status_name(exc.code)
            if name in _SECURITY_STATUSES:
                return self._security_error(name, exc)
            if name in _BUSY_STATUSES:
                return DeviceBusy(f"{phase}: {self.url} answered {name}", device_id=self.device_id)
            if name in _LINK_STATUSES:
                return DeviceUnavailable(f"{phase}: {self.url} answered {name}", device_id=self.device_id)
            return ProtocolError(f"{phase}: {self.url} answered {name}", device_id=self.device_id)
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(f"{phase}: {self.url} did not answer in time", device_id=self.device_id)
        if isinstance(exc, (OSError, ConnectionError, EOFError)):
            return DeviceUnavailable(f"{phase}: cannot reach {self.url}: {exc}", device_id=self.device_id)
        if secured:
            return self._security_error(None, exc)
        return ProtocolError(f"{phase}: {type(exc).__name__}: {exc}", device_id=self.device_id)

    def _security_error(self, status: str | None, exc: BaseException) -> SecurityRejected:
        sec = self.security or {}
        cert = _describe_certificate(sec["certificate"]) if "certificate" in sec else "no client certificate"
        if status == "BadCertificateUntrusted" or status is None:
            hint = (
                f"the server does not trust this client's certificate {cert}; "
                "add it to the server's trust list (or check the server certificate we pinned)"
            )
        elif status == "BadCertificateUriInvalid":
            hint = f"the application URI does not match the certificate {cert}"
        elif status in ("BadCertificateTimeInvalid", "BadCertificateIssuerTimeInvalid"):
            hint = f"the certificate {cert} is expired or not yet valid"
        else:
            hint = f"client certificate {cert}"
        what = status or (
            f"it broke off the secure channel handshake; its reply could not be read: {type(exc).__name__}"
        )
        return SecurityRejected(
            f"{self.url} refused the secure connection ({what}): {hint}",
            status=status,
            device_id=self.device_id,
        )

    async def _pinned_certificate_mismatch(self) -> SecurityRejected | None:
        """After a secured connect got no answer: is the pinned server certificate the wrong one?

        A server cannot decrypt a channel request made with somebody else's
        certificate and usually just does not answer, which would look like a
        time-out. GetEndpoints needs no security, so compare certificates.
        """
        pinned = (self.security or {}).get("server_certificate")
        if not pinned:
            return None
        probe = Client(self.url, timeout=self.timeout_s)
        try:
            endpoints = await asyncio.wait_for(probe.connect_and_get_server_endpoints(), self.timeout_s)
            ours = _certificate(pinned).public_bytes(Encoding.DER)
        except Exception:  # cannot tell: keep the original error
            return None
        offered = {_first_certificate(ep.ServerCertificate) for ep in endpoints if ep.ServerCertificate}
        if not offered or ours in offered:
            return None
        theirs = x509.load_der_x509_certificate(sorted(offered)[0])
        thumbprint = _thumbprint(theirs)
        return SecurityRejected(
            f"{self.url} did not answer the secure channel request: the pinned server certificate "
            f"{_describe_certificate(pinned)} is not the one the server presents "
            f"({theirs.subject.rfc4514_string()}, thumbprint {thumbprint}); check security.server_certificate",
            device_id=self.device_id,
        )

    async def _open(self) -> None:
        """Connect a fresh client, resolve every node, re-attach subscriptions."""
        try:
            client = await self._new_client()
            quiet_library_logs()  # asyncua names some loggers per client class on first use
        except Exception as exc:  # set_security may already talk to the server
            raise self._connect_error(exc, "connect") from exc
        generation = next(self._generation)
        try:
            try:
                await client.connect()
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                error = self._connect_error(exc, "connect")
                if isinstance(error, DeviceUnavailable) and not isinstance(exc, ConnectionRefusedError):
                    error = await self._pinned_certificate_mismatch() or error
                raise error from exc
            self._namespace_array = list(await self._call("connect", client.get_namespace_array()))
            node_ids = await self._call("resolve nodes", self._resolve_all(client))
        except BaseException:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(client.disconnect(), 2.0)
            raise
        self._client = client
        self._current_generation = generation
        self._node_ids = node_ids
        client.connection_lost_callback = lambda exc, g=generation: self._on_lost(g, exc)
        self._link_up = True
        for sub in list(self._subscriptions):
            try:
                await sub._attach(client, node_ids)
            except Exception as exc:
                log.warning("%s: could not re-create a subscription: %s", self.device_id, exc)

    async def _on_lost(self, generation: int, exc: Exception) -> None:
        """asyncua connection-lost callback (its watchdog or the socket noticed)."""
        if generation == self._current_generation and self._link_up:
            log.info("%s: connection to %s lost: %r", self.device_id, self.url, exc)
            self._mark_down()

    def _on_link_down(self) -> None:
        for sub in self._subscriptions:
            sub.attached.clear()

    async def _open_link(self) -> None:
        await self._open()

    def _reconnect_error(self, exc: Exception) -> DeviceError:
        if isinstance(exc, DeviceError | TimeoutError):
            return super()._reconnect_error(exc)
        return self._connect_error(exc, "reconnect")

    async def _drop_link(self) -> None:
        await self._drop_client()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._current_generation = 0
        self._link_up = False
        if client is not None:
            client.connection_lost_callback = None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(client.disconnect(), 2.0)

    # --------------------------------------------------------------- nodes
    def _expand_node_id(self, text: str) -> ua.NodeId:
        if text.startswith("nsu="):
            uri, sep, rest = text[4:].partition(";")
            if not sep:
                raise ConfigurationError(f"bad node id {text!r}", device_id=self.device_id)
            try:
                index = self._namespace_array.index(uri)
            except ValueError:
                raise ProtocolError(
                    f"node id {text!r}: the server has no namespace {uri!r}", device_id=self.device_id
                ) from None
            text = f"ns={index};{rest}"
        try:
            return ua.NodeId.from_string(text)
        except Exception as exc:
            raise ConfigurationError(f"bad node id {text!r}: {exc}", device_id=self.device_id) from None

    def _path_names(self, path: str) -> list[ua.QualifiedName]:
        names: list[ua.QualifiedName] = []
        for prefix, name in _split_path(path, self.config["namespaces"], where=path):
            if prefix is None:
                index = 0
            elif prefix.isdigit():
                index = int(prefix)
            else:
                uri = self.config["namespaces"][prefix]
                try:
                    index = self._namespace_array.index(uri)
                except ValueError:
                    raise ProtocolError(
                        f"browse path {path!r}: the server has no namespace {uri!r}", device_id=self.device_id
                    ) from None
            names.append(ua.QualifiedName(name, index))
        return names

    async def _resolve_ref(self, client: Client, ref: str) -> ua.NodeId:
        """A node id string as is; anything else is a browse path from the Root folder."""
        if _NODE_ID_RE.match(ref):
            return self._expand_node_id(ref)
        path = ref.strip().strip("/")
        if path == "Root" or path.startswith("Root/"):
            path = path[4:].lstrip("/")
        if not path:
            return client.nodes.root.nodeid
        try:
            node = await client.nodes.root.get_child(self._path_names(path))
        except ua.UaStatusCodeError as exc:
            raise ProtocolError(
                f"browse path {ref!r} not found: {_status_name(exc.code)}", device_id=self.device_id
            ) from exc
        return node.nodeid

    async def _resolve_all(self, client: Client) -> dict[str, ua.NodeId]:
        node_ids: dict[str, ua.NodeId] = {}
        for spec in self.nodes.values():
            ref = spec.node_id if spec.node_id is not None else spec.path
            assert ref is not None
            node_ids[spec.name] = (
                self._expand_node_id(ref) if spec.node_id is not None else await self._resolve_ref(client, ref)
            )
        names = list(node_ids)
        classes = await client.read_attributes(
            [client.get_node(node_ids[n]) for n in names], ua.AttributeIds.NodeClass
        )
        if len(classes) != len(names):
            raise ProtocolError(f"asked for {len(names)} node classes, got {len(classes)}", device_id=self.device_id)
        for name, datavalue in zip(names, classes, strict=True):
            status = datavalue.StatusCode or _GOOD
            if not status.is_good():
                raise ProtocolError(
                    f"node {name!r} ({self.nodes[name].ref}): {status.name}; check the node configuration",
                    device_id=self.device_id,
                )
            if datavalue.Value is not None and datavalue.Value.Value != ua.NodeClass.Variable:
                raise ProtocolError(
                    f"node {name!r} ({self.nodes[name].ref}) is a {ua.NodeClass(datavalue.Value.Value).name}, "
                    "not a Variable",
                    device_id=self.device_id,
                )
        return node_ids

    def _node_sample(self, spec: NodeSpec, raw: bytes) -> Sample:
        """Parse a node's raw DataValue; any failure is ProtocolError with the bytes."""
        try:
            return sample_from_datavalue(decode_datavalue(raw), spec.unit, spec.decimals)
        except DeviceError as exc:
            exc.raw = raw if exc.raw is None else exc.raw
            exc.device_id = exc.device_id or self.device_id
            raise
        except Exception as exc:
            raise ProtocolError(f"node {spec.name!r}: {exc}", device_id=self.device_id, raw=raw) from exc

    # ------------------------------------------------------------- requests
    def _linked_client(self, what: str) -> Client:
        if not self._link_up or self._client is None:
            raise self._down_error(what)
        return self._client

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        """Await one request, mapping asyncua failures into the device exception tree."""
        try:
            return await request
        except ua.UaStatusCodeError as exc:
            name = _status_name(exc.code)
            if name in _LINK_STATUSES:
                self._mark_down()
                raise DeviceUnavailable(f"{what}: {name}", device_id=self.device_id) from exc
            if name in _TIMEOUT_STATUSES:
                raise DeviceTimeout(f"{what}: {name}", device_id=self.device_id) from exc
            if name in _BUSY_STATUSES:
                raise DeviceBusy(f"{what}: {name}", device_id=self.device_id) from exc
            if name in _SECURITY_STATUSES:
                raise self._security_error(name, exc) from exc
            hint = "; check the node configuration" if name in _CONFIG_STATUSES else ""
            raise ProtocolError(f"{what}: {name}{hint}", device_id=self.device_id) from exc
        except (ConnectionError, OSError, EOFError) as exc:
            self._mark_down()
            raise DeviceUnavailable(f"{what}: connection to {self.url} lost: {exc}", device_id=self.device_id) from exc
        except TimeoutError as exc:
            raise DeviceTimeout(f"{what}: no answer from {self.url} within {self.timeout_s:g} s",
                                device_id=self.device_id) from exc
        except ua.UaError as exc:
            raise ProtocolError(f"{what}: {type(exc).__name__}: {exc}", device_id=self.device_id) from exc

    async def _read_frames(self, names: Sequence[str], what: str) -> list[Frame]:
        client = self._linked_client(what)
        nodes = [client.get_node(self._node_ids[n]) for n in names]
        datavalues = await self._call(what, client.read_attributes(nodes))
        monotonic, timestamp = time.monotonic(), utc_now()
        if len(datavalues) != len(names):
            raise ProtocolError(f"{what}: asked for {len(names)} values, got {len(datavalues)}",
                                device_id=self.device_id)
        return [Frame(encode_datavalue(dv), monotonic, timestamp) for dv in datavalues]

    # ------------------------------------------------------------------ hooks
    async def _connect(self) -> None:
        await self._start_link()

    async def _close(self) -> None:
        await self._stop_link()
        subscriptions = list(self._subscriptions)
        self._subscriptions.clear()
        self._stream_sub = None
        for sub in subscriptions:
            sub._end()
        await self._drop_client()
        if self._up is not None:
            self._up.set()
            self._up = asyncio.Event()

    async def _identify(self) -> DeviceIdentity:
        client = self._linked_client("identify")
        ids = ua.ObjectIds
        wanted = {
            "manufacturer": ids.Server_ServerStatus_BuildInfo_ManufacturerName,
            "product": ids.Server_ServerStatus_BuildInfo_ProductName,
            "version": ids.Server_ServerStatus_BuildInfo_SoftwareVersion,
            "build": ids.Server_ServerStatus_BuildInfo_BuildNumber,
            "product_uri": ids.Server_ServerStatus_BuildInfo_ProductUri,
        }
        values = await self._call(
            "identify", client.read_attributes([client.get_node(ua.NodeId(ua.Int32(i))) for i in wanted.values()])
        )
        if len(values) != len(wanted):
            raise ProtocolError(f"identify: asked for {len(wanted)} values, got {len(values)}", device_id=self.device_id)
        info: dict[str, str] = {}
        for key, dv in zip(wanted, values, strict=True):
            value = dv.Value.Value if dv.Value is not None and (dv.StatusCode is None or dv.StatusCode.is_good()) else None
            info[key] = str(value).strip() if value not in (None, "") else ""
        firmware = info["version"] or "unknown"
        if info["build"]:
            firmware = f"{firmware} (build {info['build']})"
        details = {"url": self.url}
        if info["product_uri"]:
            details["product_uri"] = info["product_uri"]
        if self.security is not None:
            details["security"] = f"{self.security['policy']}/{self.security['mode']}"
        return DeviceIdentity(
            make=info["manufacturer"] or "unknown",
            model=info["product"] or "unknown",
            serial_number=self.config.get("serial_number", "unknown"),
            firmware=firmware,
            details=details,
        )

    async def _read_raw(self, stable: bool) -> Frame:
        (frame,) = await self._read_frames([self.primary.name], f"read {self.primary.name}")
        return frame

    def _parse(self, raw: bytes) -> Sample:
        return sample_from_datavalue(decode_datavalue(raw), self.primary.unit, self.primary.decimals)

    async def _stream_frame(self) -> Frame:
        sub = self._stream_sub
        if sub is None or sub._closed:
            sub = NodeSubscription(
                self,
                [self.primary.name],
                publishing_interval_ms=float(self.config["publishing_interval_ms"]),
                queue_size=int(self.config["queue_size"]),
            )
            await self._start_subscription(sub)
            self._stream_sub = sub
        heartbeat = min(float(self.config["heartbeat_s"]), self.timeout_s * 0.8)
        frame = await sub._next_frame(heartbeat)
        if frame is None:  # nothing changed: read, which also proves the link is alive
            return await self._read_raw(False)
        return frame

    async def _stream_stop(self) -> None:
        sub, self._stream_sub = self._stream_sub, None
        if sub is not None:
            await sub.close()

    # ---------------------------------------------------------- public API
    async def _start_subscription(self, sub: NodeSubscription) -> None:
        self._require_connected()
        unknown = [n for n in sub.names if n not in self.nodes]
        if unknown:
            raise ConfigurationError(f"unknown node(s): {', '.join(unknown)}", device_id=self.device_id)
        self._subscriptions.add(sub)
        if self._link_up and self._client is not None:
            try:
                await self._call("subscribe", sub._attach(self._client, self._node_ids))
            except BaseException:
                self._subscriptions.discard(sub)
                raise

    def subscribe(
        self,
        names: Sequence[str] | None = None,
        *,
        publishing_interval_ms: float | None = None,
        queue_size: int | None = None,
    ) -> NodeSubscription:
        """Data changes of ``names`` (default: all nodes): ``async with driver.subscribe() as sub:``.

        The first change of each node is its current value. The subscription
        is re-created after a reconnect; if the link is down when entering,
        it is created once the link is back.
        """
        return NodeSubscription(
            self,
            list(names) if names is not None else list(self.nodes),
            publishing_interval_ms=float(
                self.config["publishing_interval_ms"] if publishing_interval_ms is None else publishing_interval_ms
            ),
            queue_size=int(self.config["queue_size"] if queue_size is None else queue_size),
        )

    async def read_nodes(
        self, names: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> dict[str, Reading]:
        """Readings of ``names`` (default: all nodes) from one Read service call."""
        order = list(dict.fromkeys(names if names is not None else self.nodes))
        unknown = [n for n in order if n not in self.nodes]
        if unknown:
            raise ConfigurationError(f"unknown node(s): {', '.join(unknown)}", device_id=self.device_id)
        async with self._operation("read_nodes", timeout or self.timeout_s):
            frames = await self._read_frames(order, "read_nodes")
            samples = [self._node_sample(self.nodes[n], f.raw) for n, f in zip(order, frames, strict=True)]
            return {n: self._reading_from(f, s) for n, f, s in zip(order, frames, samples, strict=True)}

    async def read_packml(self, *, timeout: float | None = None) -> PackMLStatus:
        """PackML state, processed/defective counters and stop reason, read together.

        Raises ConfigurationError when ``packml`` is not configured,
        ProtocolError for a state number outside PackML or a counter that is
        not a whole number, DeviceFault when a node reports a bad status.
        """
        roles: dict[str, str] = dict(self.config.get("packml") or {})
        if not roles:
            raise ConfigurationError("no 'packml' nodes configured", device_id=self.device_id)
        readings = await self.read_nodes(list(dict.fromkeys(roles.values())), timeout=timeout)
        by_role = {role: readings[name] for role, name in roles.items()}
        numbers: dict[str, int] = {}
        for role, reading in by_role.items():
            if reading.value is None:
                raise DeviceFault(
                    f"PackML {role} node {roles[role]!r} reports {reading.status.value}",
                    device_id=self.device_id,
                    raw=reading.raw,
                )
            if reading.value != reading.value.to_integral_value():
                raise ProtocolError(
                    f"PackML {role} {reading.value} is not a whole number", device_id=self.device_id, raw=reading.raw
                )
            numbers[role] = int(reading.value)
        try:
            state = PackMLState(numbers["state"])
        except ValueError:
            raise ProtocolError(
                f"PackML state number {numbers['state']} is not a PackML state",
                device_id=self.device_id,
                raw=by_role["state"].raw,
            ) from None
        for role in ("processed", "defective"):
            if numbers[role] < 0:
                numbers[role] = unsigned_counter(numbers[role], by_role[role].raw, role, self.device_id)
        return PackMLStatus(
            state=state,
            processed=numbers["processed"],
            defective=numbers["defective"],
            stop_reason=numbers.get("stop_reason"),
            readings=by_role,
        )

    async def resolve(self, ref: str, *, timeout: float | None = None) -> str:
        """The node id (string form) of a node id or browse path, as the server knows it."""
        async with self._operation("resolve", timeout or self.timeout_s):
            client = self._linked_client("resolve")
            node_id = await self._call("resolve", self._resolve_ref(client, ref))
            return str(node_id.to_string())

    async def browse(self, ref: str = "Objects", *, timeout: float | None = None) -> list[BrowsedNode]:
        """The children of a node (by node id or browse path), in server order."""
        async with self._operation("browse", timeout or self.timeout_s):
            client = self._linked_client("browse")
            node_id = await self._call("browse", self._resolve_ref(client, ref))
            refs = await self._call("browse", client.get_node(node_id).get_children_descriptions())
            return [
                BrowsedNode(
                    browse_name=f"{r.BrowseName.NamespaceIndex}:{r.BrowseName.Name}",
                    node_id=str(r.NodeId.to_string()),
                    node_class=ua.NodeClass(r.NodeClass).name,
                    display_name=str(r.DisplayName.Text or ""),
                )
                for r in refs
            ]


def _split_path(path: str, aliases: Mapping[str, str], *, where: str) -> list[tuple[str | None, str]]:
    """``Objects/2:Line/line:Speed`` → [(None, "Objects"), ("2", "Line"), ("line", "Speed")]."""
    parts = [p for p in path.strip().strip("/").split("/")]
    if not parts or any(not p for p in parts):
        raise ConfigurationError(f"{where}: empty element in browse path {path!r}")
    out: list[tuple[str | None, str]] = []
    for part in parts:
        prefix, sep, name = part.partition(":")
        if sep and (prefix.isdigit() or prefix in aliases) and name:
            out.append((prefix, name))
        elif sep and prefix and not prefix.isdigit() and name and re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", prefix):
            raise ConfigurationError(f"{where}: unknown namespace alias {prefix!r} in {path!r}")
        else:
            out.append((None, part))
    return out
