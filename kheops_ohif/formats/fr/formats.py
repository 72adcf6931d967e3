"""The same dates as in English (kheops_ohif/formats/en/formats.py): 2026-11-29 15:51 UTC."""

from kheops_ohif.formats.en.formats import (  # noqa: F401
    DATE_FORMAT,
    DATETIME_FORMAT,
    SHORT_DATE_FORMAT,
    SHORT_DATETIME_FORMAT,
    TIME_FORMAT,
)
