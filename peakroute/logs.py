"""Structured logging: ``key=value`` text for people, JSON lines for log shippers (PEAKROUTE_LOG_FORMAT)."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        f = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        f.converter = time.gmtime
        handler.setFormatter(f)
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
                 {"format": "%(asctime)s %(levelname)-5s %(name)s: %(message)s"})
    lib = libraries.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "peakroute": {"level": level.upper()},
            "faust": {"level": lib}, "mode": {"level": lib}, "aiokafka": {"level": lib},
            "kafka": {"level": lib},
        },
    }
