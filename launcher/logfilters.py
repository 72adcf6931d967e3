"""Keep secrets out of log lines that quote URLs (the server's access log above all); the
request id of every line (LOG_FORMAT=json)."""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Query parameters whose values are secrets: KHEOPS's authorization code, and a token anyone
# might try to pass. The value is replaced, the name kept, so the line still reads.
SECRET_PARAMETERS = re.compile(r"(?i)([?&](?:code|token|access_token|client_assertion)=)[^&\s\"']*")


def redact(text: str) -> str:
    return SECRET_PARAMETERS.sub(r"\1[redacted]", text)


class RedactSecretParameters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


# The request being served (launcher.serving sets it per HTTP request; asgiref carries it
# into the request's thread). "-" outside any request (start-up, housekeeping).
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
# What a proxy's X-Request-ID may be to be kept (nginx's $request_id: 32 hex digits).
WELL_FORMED_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def request_id_from(header: bytes | None) -> str:
    """The proxy's id when it is well formed (lines then match the proxy's), else a new one."""
    if header is not None:
        text = header.decode("latin-1")
        if WELL_FORMED_REQUEST_ID.fullmatch(text):
            return text
    return secrets.token_hex(16)


class WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonLines(JsonFormatter):
    """One JSON object a line with known fields only: a record's extras (Django's `request`,
    whose repr quotes the URL and its code) are never written."""

    FIELDS = ("time", "level", "logger", "message", "request_id", "exc_info")

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: log_data[key] for key in self.FIELDS if key in log_data}
