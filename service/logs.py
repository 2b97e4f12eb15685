"""Structured JSON logs, one object per line, carrying the request id when there is one.

`logging_config(level)` is a `logging.config.dictConfig` dictionary: uvicorn applies it in
every process it starts (the supervisor and each spawned worker configure logging afresh),
so all processes write the same JSON lines; each line names its process (`pid`).
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import os
import time

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# uvicorn's follow-up to a failed start-up; the line before it already says what failed.
_REDUNDANT_STARTUP_LINE = "Application startup failed. Exiting."


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            # uvicorn logs its server life cycle as "uvicorn.error" even at INFO: an operator
            # grepping for errors should not find "Started server process".
            "logger": "uvicorn" if record.name == "uvicorn.error" else record.name,
            "pid": record.process if record.process is not None else os.getpid(),
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key in ("route", "status", "duration_ms", "faces", "provider"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # orjson: one access line per request is written from the event loop.
        return orjson.dumps(entry, default=str).decode()


class DropRedundantStartupLine(logging.Filter):
    """Drops uvicorn's "Application startup failed. Exiting." (the service has already logged
    one line saying why), so a failed start-up says what failed once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _REDUNDANT_STARTUP_LINE


def logging_config(level: str) -> dict:
    """dictConfig for the root logger (JSON to stderr) and uvicorn's loggers (propagating to
    it; uvicorn's access lines are replaced by the service's own per-request line)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "filters": {"startup": {"()": "service.logs.DropRedundantStartupLine"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "json", "filters": ["startup"]}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": True, "level": "WARNING"},
        },
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
