"""Logging: human lines by default, JSON on request; secrets are scrubbed before any handler."""

from __future__ import annotations

import json
import logging
import re
import time

_BEARER = re.compile(
    r"(Bearer\s+|hq_pat_|access_token=|passcode:\s*|authorization:\s*(?:bearer\s+|basic\s+)?|token=|\w+_session=)[A-Za-z0-9._~+/=%-]+",
    re.IGNORECASE,
)
# A JWT anywhere (header.payload.signature, base64url; the header always starts with '{"' → eyJ).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


# Control characters (C0, DEL, C1) and Unicode line breaks: a client-supplied value (a STOMP header
# with an escaped newline, a URL) must never end the line it is logged on and start a forged one.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
_CONTROL.pop(0x09)  # a tab cannot start a line


def scrub(text: str) -> str:
    return _JWT.sub("eyJ***", _BEARER.sub(lambda m: m.group(1) + "***", text))


def one_line(text: str) -> str:
    """``text`` with every line break and control character escaped (``\\x0a``)."""
    return text.translate(_CONTROL)


class _ScrubFilter(logging.Filter):
    """Last line of defence: no token shape survives into a log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = one_line(scrub(record.getMessage()).rstrip("\r\n"))
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text: the traceback (exception messages included) is scrubbed too.
            record.exc_text = scrub(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ScrubFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
