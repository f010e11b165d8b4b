"""Configuration from ``MES_*`` environment variables and the instance folder.

Every setting has one name, one type and one default, declared in :data:`SETTINGS`, so the
README table, ``mes check`` and the error messages all come from the same place. A missing
or invalid value raises :class:`ConfigError` naming the variable, never a traceback deep
inside SQLAlchemy.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mes.plant_time import parse_shifts, parse_zone


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _parse_positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a positive whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive whole number, got {raw!r}")
    return value


def _parse_scanner_suffix(raw: str) -> str:
    """The key ending a scan, as the browser names it."""
    value = raw.strip().capitalize()
    if value not in ("Enter", "Tab"):
        raise ValueError("must be Enter or Tab")
    return value


def _parse_count(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, 0 or more, got {raw!r}") from None
    if not 0 <= value <= 10:
        raise ValueError(f"expected a whole number from 0 to 10, got {raw!r}")
    return value


def _parse_megabytes(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number of megabytes, 0 or more, got {raw!r}") from None
    if not 0 <= value <= 10**7:
        raise ValueError(f"expected a whole number of megabytes from 0 to 10000000, got {raw!r}")
    return value


def _parse_wait_seconds(raw: str) -> int:
    """Seconds a request may wait: 0 (do not wait) to 600."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number of seconds from 0 to 600, got {raw!r}") from None
    if not 0 <= value <= 600:
        raise ValueError(f"expected a whole number of seconds from 0 to 600, got {raw!r}")
    return value


def _parse_site_id(raw: str) -> str:
    value = raw.strip()
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    if not value or not set(value) <= allowed:
        raise ValueError("expected a lowercase host-like name such as plant-01.example")
    return value


def _parse_database_url(raw: str) -> str:
    try:
        url = make_url(raw)
    except ArgumentError as exc:  # pragma: no cover - message depends on SQLAlchemy
        raise ValueError(f"not a database URL ({exc})") from None
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
    if url.get_backend_name() == "postgresql" and url.get_driver_name() not in {"psycopg", "psycopg2"}:
        raise ValueError("use the psycopg driver: postgresql+psycopg://user@host/db")
    return raw


def _parse_pades_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"B-B", "B-T", "B-LTA"}:
        raise ValueError("expected B-B, B-T or B-LTA")
    return value


def _parse_log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


#: argon2id cost of password and PIN hashes in production: argon2-cffi's defaults, the
#: second recommendation of RFC 9106 (3 passes over 64 MiB in 4 lanes). The MES_ARGON2_*
#: settings lower it only where hashing time matters more than resistance to guessing
#: (the test suite); a stored hash keeps the cost it was made with, so verifying never depends on them.
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_PARALLELISM = 4


def _parse_units_file(raw: str) -> str:
    """A plant units file (pint definitions) that exists; empty for the shipped units only.
    The units themselves are read at start by :mod:`mes.quantities` from the same variable."""
    path = raw.strip()
    if path and not Path(path).is_file():
        raise ValueError(f"no units file at {path}")
    return path


@dataclass(frozen=True)
class Setting:
    """One ``MES_*`` variable: its Flask config key, parser, default and meaning."""

    env: str
    key: str
    parse: Callable[[str], Any]
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("MES_DATABASE_URL", "SQLALCHEMY_DATABASE_URI", _parse_database_url, None,
            "Database URL; default SQLite file mes.sqlite3 in MES_HOME"),
    Setting("MES_SECRET_KEY", "SECRET_KEY", str, None,
            "Session signing key; default generated once into MES_HOME/secret_key"),
    Setting("MES_SITE_ID", "MES_SITE_ID", _parse_site_id, "plant-01.example",
            "Site id: origin of audit checkpoints and CloudEvents source"),
    Setting("MES_TIMEZONE", "MES_TIMEZONE", parse_zone, "UTC",
            "Plant time zone: displayed times, shifts, expiry and calibration dates (records are stored in UTC)"),
    Setting("MES_SHIFTS", "MES_SHIFTS", parse_shifts, "06:00,14:00,22:00",
            "Shift start times in plant time (MES_TIMEZONE), optionally named: early=06:00,late=14:00,night=22:00"),
    Setting("MES_PANEL_PPI", "MES_PANEL_PPI", _parse_positive_int, "141",
            "Kiosk panel pixels per inch (touch target sizing)"),
    Setting("MES_PANEL_DPR", "MES_PANEL_DPR", _parse_positive_int, "1",
            "Kiosk panel device pixel ratio"),
    Setting("MES_KIOSK_IDLE_SECONDS", "MES_KIOSK_IDLE_SECONDS", _parse_positive_int, "300",
            "Idle logout on kiosks"),
    Setting("MES_SCANNER_PREFIX", "MES_SCANNER_PREFIX", str, "",
            "Characters the kiosk's barcode scanners send before each code (none by default); a burst "
            "without them is a partial scan"),
    Setting("MES_SCANNER_SUFFIX", "MES_SCANNER_SUFFIX", _parse_scanner_suffix, "Enter",
            "The key the kiosk's barcode scanners send after each code: Enter or Tab"),
    Setting("MES_SCANNER_MIN_LENGTH", "MES_SCANNER_MIN_LENGTH", _parse_positive_int, "3",
            "The shortest code a scan can be; a shorter fast burst is a partial scan"),
    Setting("MES_WORKSTATION_IDLE_SECONDS", "MES_WORKSTATION_IDLE_SECONDS", _parse_positive_int, "900",
            "Idle logout on QA / admin workstations"),
    Setting("MES_SESSION_MAX_HOURS", "MES_SESSION_MAX_HOURS", _parse_positive_int, "12",
            "Absolute lifetime of a log-in and of a browser session, whatever the activity"),
    Setting("MES_PASSWORD_MAX_AGE_DAYS", "MES_PASSWORD_MAX_AGE_DAYS", _parse_positive_int, "90",
            "Password ageing: a password older than this must be changed"),
    Setting("MES_PASSWORD_MIN_LENGTH", "MES_PASSWORD_MIN_LENGTH", _parse_positive_int, "12",
            "Minimum password length"),
    Setting("MES_LOCKOUT_THRESHOLD", "MES_LOCKOUT_THRESHOLD", _parse_positive_int, "5",
            "Failed log-ins that lock an account"),
    Setting("MES_LOGIN_RATE_PER_MINUTE", "MES_LOGIN_RATE_PER_MINUTE", _parse_positive_int, "20",
            "Log-in and password-change attempts allowed per terminal (else client address) per minute"),
    Setting("MES_ACCOUNT_RATE_PER_MINUTE", "MES_ACCOUNT_RATE_PER_MINUTE", _parse_positive_int, "10",
            "Credential attempts (log-in, password change, signature) allowed per account per minute"),
    Setting("MES_PROXY_HOPS", "MES_PROXY_HOPS", _parse_count, "0",
            "Trusted reverse proxies in front of the app (1 behind the shipped nginx): their X-Forwarded-For is used"),
    Setting("MES_SESSION_COOKIE_SECURE", "SESSION_COOKIE_SECURE", _parse_bool, "true",
            "Send session cookies over HTTPS only (false only for the local demo)"),
    Setting("MES_REDIS_URL", "MES_REDIS_URL", str, "",
            "Redis URL for the Socket.IO message queue and shared attempt limits when several web workers run"),
    Setting("MES_AUDIT_KEY_PATH", "MES_AUDIT_KEY_PATH", str, "",
            "Audit checkpoint signing key; default MES_HOME/audit-signing.key"),
    Setting("MES_AUDIT_TAG_KEY_PATH", "MES_AUDIT_TAG_KEY_PATH", str, "",
            "Audit entry authentication tag key (never in the database); default audit-tag.key beside the "
            "signing key"),
    Setting("MES_PKCS11_MODULE", "MES_PKCS11_MODULE", str, "",
            "PKCS#11 module (an HSM's library, e.g. /usr/lib/softhsm/libsofthsm2.so): when set, the audit signing "
            "and tag keys and the eBR signing key live in its token instead of files"),
    Setting("MES_PKCS11_TOKEN", "MES_PKCS11_TOKEN", str, "mes",
            "Label of the PKCS#11 token holding the MES's keys"),
    Setting("MES_PKCS11_PIN_FILE", "MES_PKCS11_PIN_FILE", str, "",
            "File (mode 0600) holding the PKCS#11 token's user PIN"),
    Setting("MES_AUDIT_VERIFY_SECONDS", "MES_AUDIT_VERIFY_SECONDS", _parse_positive_int, "86400",
            "How often each server re-verifies the whole audit log (also at start-up); new entries are "
            "verified before every checkpoint"),
    Setting("MES_OEE_CLOSE_SECONDS", "MES_OEE_CLOSE_SECONDS", _parse_positive_int, "300",
            "How often each server closes the OEE shifts that ended 15 min ago or more (mes.oee.shift_closed.v1, once per "
            "line and shift)"),
    Setting("MES_AUDIT_WITNESSES", "MES_AUDIT_WITNESSES", str, "",
            "Witnesses of the audit log: space-separated <url>=<verifier key>"),
    Setting("MES_AUDIT_VERIFIER_KEYS", "MES_AUDIT_VERIFIER_KEYS", str, "",
            "Pinned verifier keys of the audit log (space-separated, log.vkey form); when set, only these verify "
            "checkpoints"),
    Setting("MES_AUDIT_WITNESS_MAX_AGE_SECONDS", "MES_AUDIT_WITNESS_MAX_AGE_SECONDS", _parse_positive_int, "900",
            "Alarm when the newest cosigned checkpoint is older than this"),
    Setting("MES_DISK_FREE_MARGIN_MB", "MES_DISK_FREE_MARGIN_MB", _parse_megabytes, "1024",
            "Alarm when the SQLite database's disk has less free space than this (MB), before it is full; "
            "a full disk is refused with 507 and turns /readyz red (0: no alarm)"),
    Setting("MES_LOG_LEVEL", "MES_LOG_LEVEL", _parse_log_level, "INFO",
            "Log level of the MES's own logs; libraries (alembic, asyncua, pymodbus, ...) log warnings only, "
            "unless DEBUG"),
    Setting("MES_ARGON2_TIME_COST", "MES_ARGON2_TIME_COST", _parse_positive_int, str(ARGON2_TIME_COST),
            "argon2id passes for new password and PIN hashes (lower only for tests)"),
    Setting("MES_ARGON2_MEMORY_KIB", "MES_ARGON2_MEMORY_KIB", _parse_positive_int, str(ARGON2_MEMORY_KIB),
            "argon2id memory (KiB) for new password and PIN hashes; at least 8 per lane (lower only for tests)"),
    Setting("MES_ARGON2_PARALLELISM", "MES_ARGON2_PARALLELISM", _parse_positive_int, str(ARGON2_PARALLELISM),
            "argon2id lanes for new password and PIN hashes (lower only for tests)"),
    Setting("MES_CAPTURE_MAX_AGE_MS", "MES_CAPTURE_MAX_AGE_MS", _parse_positive_int, "3000",
            "Oldest scale reading (ms) a weigh step accepts from the device gateway"),
    Setting("MES_WEIGH_MAX_FAILED_ATTEMPTS", "MES_WEIGH_MAX_FAILED_ATTEMPTS", _parse_positive_int, "3",
            "Out-of-tolerance weighings of one step refused as attempts (audited, listed for review) before "
            "the next one raises a major deviation; the operator may report one at any time"),
    Setting("MES_GATEWAY_CONFIG", "MES_GATEWAY_CONFIG", str, "",
            "Device gateway configuration (YAML: device id, driver, driver config, rate per device)"),
    Setting("MES_SIMULATION", "MES_SIMULATION", _parse_bool, "false",
            "Run simulated scales and a simulated line inside the server (set by `mes demo`; never in a plant)"),
    Setting("MES_UNITS_FILE", "MES_UNITS_FILE", _parse_units_file, "",
            "The plant's own units of measure (pint definitions, added to the shipped mes/units.txt; see docs/units.md)"),
    Setting("MES_EBR_SIGNING_CERT_PATH", "MES_EBR_SIGNING_CERT_PATH", str, "",
            "Document-signing certificate (PEM) of the eBR; default MES_HOME/ebr-signing.crt, created by `mes init`"),
    Setting("MES_EBR_SIGNING_KEY_PATH", "MES_EBR_SIGNING_KEY_PATH", str, "",
            "Private key (PEM) of the eBR signing certificate; default MES_HOME/ebr-signing.key"),
    Setting("MES_EBR_CA_CERT_PATH", "MES_EBR_CA_CERT_PATH", str, "",
            "Plant CA certificate (PEM) that issued the eBR signing certificate; default MES_HOME/plant-ca.crt"),
    Setting("MES_EBR_TSA_URL", "MES_EBR_TSA_URL", str, "",
            "RFC 3161 time-stamp authority: eBR signatures become PAdES B-T or B-LTA (MES_EBR_PADES_LEVEL; "
            "default B-B)"),
    Setting("MES_EBR_PADES_LEVEL", "MES_EBR_PADES_LEVEL", _parse_pades_level, "B-LTA",
            "PAdES level of eBR signatures when a time-stamp authority is configured: B-T, or B-LTA (validation data "
            "of every certificate in the document's security store and a document time-stamp over it); B-B without "
            "one"),
    Setting("MES_EBR_TSA_CA_PATH", "MES_EBR_TSA_CA_PATH", str, "",
            "CA certificate(s) (PEM) of the time-stamp authority, trusted when its time-stamps are checked at signing "
            "(B-LTA); default Mozilla's public CAs (certifi)"),
    Setting("MES_EBR_FONT", "MES_EBR_FONT", str, "",
            "Font file (path[:face index]) the eBR is printed in; default Noto Sans CJK found with fc-match"),
    Setting("MES_EBR_WITNESS_WAIT_SECONDS", "MES_EBR_WITNESS_WAIT_SECONDS", _parse_wait_seconds, "10",
            "How long a release waits (0-600 s) for every audit witness to cosign its release checkpoint before it "
            "answers with the eBR still pending (then finished by the background job)"),
    Setting("MES_EBR_WITNESS_MAX_WAIT_SECONDS", "MES_EBR_WITNESS_MAX_WAIT_SECONDS", _parse_positive_int, "3600",
            "After this long without every witness's cosignature of the release checkpoint, a pending eBR is "
            "generated with the cosignatures received (the missing witnesses are named; audit alarm)"),
    Setting("MES_INTEGRATION_BACKLOG_ALARM_SECONDS", "MES_INTEGRATION_BACKLOG_ALARM_SECONDS", _parse_positive_int, "900",
            "Alarm when an integration endpoint's oldest undelivered event is older than this (checked by each "
            "server's background jobs; dead letters alarm at once)"),
    Setting("MES_LIVE_CONNECTIONS", "MES_LIVE_CONNECTIONS", _parse_positive_int, None,
            "Live connections (WebSocket or long-poll, each holding a thread) one web instance serves at once; "
            "more are refused with 503 and the live-connections alarm, so requests always find a thread. "
            "Default: MES_THREADS less a fifth of them (at least 2) kept for requests"),
    Setting("MES_RELAY_IN_SERVER", "MES_RELAY_IN_SERVER", _parse_bool, "false",
            "Run an outbox relay inside the server (set by `mes demo`; in a plant run `mes relay` as its own service)"),
)


@dataclass
class InstanceFolder:
    """The folder every ``mes`` command works in (``$MES_HOME``, default ``./instance``)."""

    path: Path = field(default_factory=lambda: Path(os.environ.get("MES_HOME", "instance")).resolve())

    @property
    def database_path(self) -> Path:
        return self.path / "mes.sqlite3"

    @property
    def secret_key_path(self) -> Path:
        return self.path / "secret_key"

    @property
    def audit_key_path(self) -> Path:
        return self.path / "audit-signing.key"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)


def _read_or_create_secret(folder: InstanceFolder, create: bool) -> str:
    path = folder.secret_key_path
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise ConfigError("MES_SECRET_KEY is not set and MES_HOME has no secret_key file; run `mes init`")
    folder.ensure()
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def load_config(
    env: Mapping[str, str] | None = None,
    *,
    create_secret: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the Flask config dict from the environment, then ``overrides``.

    Raises ConfigError naming the variable when a setting is missing or invalid.
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    folder = InstanceFolder(Path(overrides.get("MES_HOME") or env.get("MES_HOME", "instance")).resolve())
    config: dict[str, Any] = {"MES_HOME": str(folder.path)}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw is None or raw == "":
            raw = setting.default
        if raw is None:
            continue
        try:
            config[setting.key] = setting.parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{setting.env} is invalid: {exc}") from None
    config.update(overrides)
    if config["MES_ARGON2_MEMORY_KIB"] < 8 * config["MES_ARGON2_PARALLELISM"]:
        raise ConfigError("MES_ARGON2_MEMORY_KIB is invalid: argon2 needs at least 8 KiB per lane "
                          f"(8 × MES_ARGON2_PARALLELISM = {8 * config['MES_ARGON2_PARALLELISM']})")
    if "MES_LIVE_CONNECTIONS" not in config:
        config["MES_LIVE_CONNECTIONS"] = live_connections_for(threads_of(env))
    if "SQLALCHEMY_DATABASE_URI" not in config:
        config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{folder.database_path}"
    if "SECRET_KEY" not in config:
        config["SECRET_KEY"] = _read_or_create_secret(folder, create_secret)
    if not config["MES_AUDIT_KEY_PATH"]:
        config["MES_AUDIT_KEY_PATH"] = str(folder.audit_key_path)
    if not config["MES_AUDIT_TAG_KEY_PATH"]:
        config["MES_AUDIT_TAG_KEY_PATH"] = str(Path(config["MES_AUDIT_KEY_PATH"]).parent / "audit-tag.key")
    return config


#: Threads of a web instance when ``MES_THREADS`` is not set.
DEFAULT_THREADS = 50
#: The range ``MES_THREADS`` may take.
THREADS_RANGE = (1, 1000)


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    """A whole number from ``env[name]`` within [minimum, maximum], ``default`` when unset; a
    one-line :class:`ConfigError` naming the variable otherwise (the server variables' reader)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from {minimum} to {maximum}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value}: expected a whole number from {minimum} to {maximum}")
    return value


def threads_of(env: Mapping[str, str]) -> int:
    """The threads of a web instance (``MES_THREADS``): read here only, for the server and for
    the live-connection budget alike."""
    return env_int(env, "MES_THREADS", DEFAULT_THREADS, *THREADS_RANGE)


def live_connections_for(threads: int) -> int:
    """The live connections an instance with ``threads`` threads serves at once: all but a
    fifth of them (at least 2), which are kept for requests."""
    return max(1, threads - max(2, threads // 5))


def database_backend(url: str) -> str:
    """'sqlite' or 'postgresql' for a configured URL."""
    return make_url(url).get_backend_name()
