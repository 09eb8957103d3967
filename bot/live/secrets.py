"""API credentials for live trading, and keeping them out of every log line and error.

Where keys come from (nothing else is read; config files never hold secrets):

* the environment: ``MMBOT_API_KEY``, ``MMBOT_API_SECRET`` and optionally ``MMBOT_API_PASSWORD``;
* or a key file given by path (``--key-file`` / ``live.key_file``) with lines
  ``MMBOT_API_KEY=...``, ``MMBOT_API_SECRET=...``, ``MMBOT_API_PASSWORD=...`` (``#`` comments
  and blank lines allowed). The file is refused unless only its owner can read it (mode
  ``0600`` or ``0400``: no group or other bits) and it belongs to the current user.

A key file wins over the environment when both are given. Every secret loaded is
registered with :func:`register_secret`; :func:`install_log_redaction` makes every log record
of the process pass through :func:`redact` (the record factory rewrites the message before
any handler sees it), and the live adapter redacts error messages with the same function.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bot.errors import ConfigError

ENV_KEY, ENV_SECRET, ENV_PASSWORD = "MMBOT_API_KEY", "MMBOT_API_SECRET", "MMBOT_API_PASSWORD"
REDACTED = "***"
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` hides it (values shorter than 4 chars are not
    registered: hiding them would garble ordinary text, and no real key is that short)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


@dataclass(frozen=True)
class Credentials:
    """API key, secret and optional password (passphrase). ``repr`` never shows them."""

    api_key: str
    secret: str
    password: str | None = None
    source: str = "environment"

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, api_key={REDACTED}, secret={REDACTED})"

    __str__ = __repr__

    def ccxt(self) -> dict[str, str]:
        """The ccxt client fields (``apiKey``, ``secret``, ``password``)."""
        d = {"apiKey": self.api_key, "secret": self.secret}
        if self.password:
            d["password"] = self.password
        return d


def _read_key_file(path: Path) -> dict[str, str]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"key file {path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"run: chmod 600 {path}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"key file {path} belongs to another user (uid {st.st_uid})")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"key file {path} line {n}: expected NAME=VALUE")  # the line itself is not shown
        name, value = (x.strip() for x in line.split("=", 1))
        if name not in (ENV_KEY, ENV_SECRET, ENV_PASSWORD):
            raise ConfigError(f"key file {path} line {n}: unknown name {name!r} "
                              f"(expected {ENV_KEY}, {ENV_SECRET} or {ENV_PASSWORD})")
        out[name] = value.strip("'\"")
    return out


def load_credentials(key_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Credentials:
    """Credentials from ``key_file`` if given, else from the environment; registered for
    redaction. Raises :class:`ConfigError` (never showing a secret) when missing or unsafe."""
    env = os.environ if env is None else env
    if key_file is not None:
        values, source = _read_key_file(Path(key_file)), f"key file {key_file}"
    else:
        values, source = {k: env[k] for k in (ENV_KEY, ENV_SECRET, ENV_PASSWORD) if env.get(k)}, "environment"
    missing = [k for k in (ENV_KEY, ENV_SECRET) if not values.get(k)]
    if missing:
        raise ConfigError(f"live trading needs API credentials: {', '.join(missing)} not set in the {source} "
                          f"(set {ENV_KEY} and {ENV_SECRET}, or give --key-file with mode 0600)")
    creds = Credentials(values[ENV_KEY], values[ENV_SECRET], values.get(ENV_PASSWORD) or None, source)
    for v in (creds.api_key, creds.secret, creds.password):
        register_secret(v)
    return creds


_installed = False


def install_log_redaction() -> None:
    """Make every log record of this process pass through :func:`redact` (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if _secrets:
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record is left to logging to report
                return record
            record.msg, record.args = redact(msg), ()
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class RedactingFormatter(logging.Formatter):
    """A formatter that also redacts tracebacks (formatted after the record was made)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
