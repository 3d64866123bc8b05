"""Logging set-up shared by the services: one format, and floods collapsed into counts.

A client that sends a million bad frames must not write a million log lines: each message
template may log `burst` records per `window_s`; the rest are counted and reported in one
line when the window ends.
"""

from __future__ import annotations

import logging
import re
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RateLimitFilter(logging.Filter):
    """Lets at most `burst` records of one (logger, template) through per window."""

    def __init__(self, *, burst: int = 20, window_s: float = 10.0) -> None:
        super().__init__()
        self._burst = burst
        self._window_s = window_s
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (start, count)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self._window_s:
            if count > self._burst:
                record.msg = f"{record.msg} [{count - self._burst} similar lines suppressed]"
            self._windows[key] = (now, 1)
            return True
        self._windows[key] = (start, count + 1)
        if len(self._windows) > 10_000:  # templates are few; this only bounds a pathological mix
            self._windows.clear()
        return count < self._burst


class RedactSecrets(logging.Filter):
    """Masks API keys in any record (third-party loggers included) before it is written."""

    _SECRET = re.compile(r"(api_key=|Bearer\s+)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._SECRET.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets())
    handler.addFilter(RateLimitFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Request lines come from our own middleware, without query strings (API keys).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
