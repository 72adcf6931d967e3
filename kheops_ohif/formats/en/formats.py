"""One way to write a date on every page of ours and of the admin: 2026-11-29 15:51 UTC.

Django's English formats ("Nov. 29, 2026, 3:51 p.m.") read differently from the ISO dates
of the index page, the CSV export and the API; admins compare them across all three. Only
display formats change here: what forms accept is Django's default (ISO first).
"""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i T"
TIME_FORMAT = "H:i"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
