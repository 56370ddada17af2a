"""The one place fetcher's messages are formatted: module loggers of ``fetcher.*`` and ``storage.*``
go through one handler on stderr, as ``fetcher: [warning: ]message`` text or as JSON objects
(``--log-format json``), and never land on the progress bar's line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TextIO

ROOT_LOGGERS = ("fetcher", "storage")


class TextFormatter(logging.Formatter):
    """``fetcher: message`` for information, ``fetcher: warning: message`` for warnings and worse."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"fetcher: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"fetcher: warning: {msg}"
        return f"fetcher: {msg}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, the shape of the progress and summary lines (``event``: ``log``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": "log",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
                "time": round(record.created, 3),
            },
            separators=(",", ":"),
        )


class StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (looked up per record, so redirections and test captures
    work) after asking the progress bar, if one is drawn, to clear its line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.before_write: Callable[[TextIO], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr
            if self.before_write is not None:
                self.before_write(stream)
            stream.write(text + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


_handler: StderrHandler | None = None


def setup_logging(log_format: str = "text") -> StderrHandler:
    """Install (once) the stderr handler on fetcher's loggers; later calls only switch the format."""
    global _handler
    if _handler is None:
        _handler = StderrHandler()
        for name in ROOT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(_handler)
            logger.setLevel(logging.INFO)
    _handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return _handler


def set_line_owner(clear: Callable[[TextIO], None] | None) -> None:
    """Register the progress bar's line-clearing callback (None: no bar drawn any more)."""
    if _handler is not None:
        _handler.before_write = clear
