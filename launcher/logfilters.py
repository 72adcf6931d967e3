"""Keep secrets out of log lines that quote URLs (the server's access log above all)."""

from __future__ import annotations

import logging
import re

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
