"""Logging setup (plain or JSON lines), called only from the CLI.

Both formats put one record on one line with an ISO 8601 UTC time. Access records carry
their fields in `record.access` (see web/middleware.py): the JSON format makes them
top-level keys, the plain format prints the message, which is already `key=value` pairs.

Credentials and tokens are never passed to a logger (upstream/client.py logs no headers,
no token bodies and no URLs with credentials; config.py keeps passwords out of reprs).
As a second line of defence every formatted line, tracebacks included, goes through
`redact`, which blanks anything shaped like a credential.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from regcache.config import LogConfig

_REDACTIONS = (
    # "Authorization: Bearer x", "Bearer x", "Basic x"
    (re.compile(r"\b(Bearer|Basic|BEARER|BASIC|bearer)( +)[A-Za-z0-9._~+/=-]{4,}"), r"\1\2[redacted]"),
    # a JWT anywhere (Docker Hub and ghcr tokens are JWTs)
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@"), r"\1[redacted]@"),
    # token=..., access_token=..., password=... in a query string or a message
    (re.compile(r"(?i)\b((?:access_|refresh_|id_)?token|password|passwd|secret)([=:]\s*)[^\s&\"',;]+"),
     r"\1\2[redacted]"),
)


def redact(text: str) -> str:
    """Blank credential-shaped substrings (defence in depth; nothing should log them)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class PlainFormatter(logging.Formatter):
    """`<time> <level> <logger>: <message>`, one line (tracebacks indented below it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, plus the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": _utc(record), "level": record.levelname.lower(),
                                    "logger": record.name}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry["msg"] = "request"
            entry.update(access)
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else PlainFormatter()


def setup_logging(config: LogConfig, stream: object = None) -> None:
    """Root logger to stderr (or `stream`) in the configured format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(make_formatter(config.format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's own access logger is off: regcache writes one access line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # log.access_log is its own switch: access lines are written even when log.level is
    # "warning" or "error" (turn them off with access_log: false).
    logging.getLogger("regcache.access").setLevel(logging.INFO)
