"""Structured logs: one JSON object per line, to stdout (the pod log) and to the run's log file.

JSON so log pipelines (Loki, Cloud Logging) index rank, phase and step without parsing prose; the
file is what rank 0's pod uploads next to the video, so the log outlives the pods.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "rank", "message", ...extra}`; extras from `extra={...}`."""

    def __init__(self, rank: int | None) -> None:
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "rank": self.rank,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(rank: int | None, log_file: str | Path | None) -> None:
    """Root logger at INFO to stdout and (appending) to `log_file`; every process of the pod may
    append to the same file, each line is one write."""
    formatter = JsonFormatter(rank)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
