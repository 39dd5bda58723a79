"""Structured logging: ``key=value`` text for people, JSON lines for log shippers (PEAKROUTE_LOG_FORMAT).

Every handler PeakRoute installs masks personal data (receiver names, phones, addresses: see
:mod:`peakroute.domain.pii`) in the message *and* in exception text, whoever logged it (faust,
aiokafka and our own code alike): :class:`PiiFilter` rewrites the record before any formatter sees
it, and the formatters scrub their final output once more.  Code must still never log payloads;
this is the safety net for when an exception message carries one.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import IO

import orjson

from .domain import pii

#: Credentials that may end up in a message: a URL's password (``redis://:pw@host``) and a bearer token.
_URL_PASSWORD = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@/\s]+@")
_BEARER = re.compile(r"(?P<pre>\bBearer\s+)[^\s'\",;]+", re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """``text`` with URL passwords and bearer tokens replaced by ``***``."""
    if not text:
        return text
    return _BEARER.sub(r"\g<pre>***", _URL_PASSWORD.sub(r"\g<pre>***@", text))


def scrub_text(text: str) -> str:
    """What any log line goes through: personal data masked, credentials removed."""
    return redact_credentials(pii.scrub_text(text))


class PiiFilter(logging.Filter):
    """Mask personal data and credentials in a record's message, exception and stack text (never drops a record)."""

    _fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string: let the handler report it as usual)
            return True
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._fmt.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose output is scrubbed of personal data."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_text(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        if record.exc_info or record.exc_text:
            doc["exc"] = scrub_text(record.exc_text or self.formatException(record.exc_info))
        return orjson.dumps(doc).decode()


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """The one log handler of a PeakRoute process: stderr, text or JSON, personal data masked."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        f = TextFormatter("%(asctime)s.%(msecs)03dZ %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        f.converter = time.gmtime
        handler.setFormatter(f)
    handler.addFilter(PiiFilter())
    return handler


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = make_handler(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("peakroute").setLevel(level.upper())


def logging_config(level: str = "INFO", fmt: str = "text", libraries: str = "WARNING") -> dict:
    """A dictConfig for processes run by faust/mode workers (they install their own logging).

    Library loggers (faust, aiokafka, mode) stay at ``libraries``: at DEBUG, aiokafka and faust
    format a record for every message sent, which costs more than the routing itself.
    """
    formatter = ({"()": JsonFormatter} if fmt == "json" else
                 {"()": TextFormatter, "fmt": "%(asctime)s %(levelname)-5s %(name)s: %(message)s"})
    lib = libraries.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"pii": {"()": PiiFilter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["pii"],
                                "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "peakroute": {"level": level.upper()},
            "faust": {"level": lib}, "mode": {"level": lib}, "aiokafka": {"level": lib},
            "kafka": {"level": lib},
        },
    }
