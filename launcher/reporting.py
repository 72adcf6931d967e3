"""Error reports (Django's technical 500 page, the admins' error e-mail) without our secrets.

Django hides the local variables of functions marked with `sensitive_variables` (ours: every
function that holds a code, an assertion, a token or a key), POST parameters marked with
`sensitive_post_parameters`, and settings whose names look secret. It still shows the
request: its URL and query string (a launch URL carries KHEOPS's authorization code), its
cookies (the per-launch browser key is the viewer's only credential) and every `request`
local variable (whose text is its full path). This filter hides those too, and hides
everything, DEBUG or not: an error page on a DEBUG server is still a page someone reads.
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

# Query parameters whose values are secrets (those the log filter redacts too).
SECRET_QUERY_PARAMETERS = ("code", "token", "access_token", "client_assertion")
# Their values in any text: a URL, a query string (META's QUERY_STRING has no "?"), a
# request's repr.
SECRET_VALUES = re.compile(
    r"(?i)((?:^|[?&;\s])(?:" + "|".join(SECRET_QUERY_PARAMETERS) + r")=)[^&;\s\"']*"
)
# Cookies that are credentials: the per-launch browser key (launcher.services.grant_cookie_name).
SECRET_COOKIE_PREFIX = "kheops_ohif_grant_"  # noqa: S105 - a name, not a secret


class SecretsFilter(SafeExceptionReporterFilter):
    # Django's names, and the URLs that can carry a password (Redis, the cache's LOCATION).
    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|REDIS_URL|LOCATION", flags=re.I
    )

    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return redact(cleansed) if isinstance(cleansed, str) else cleansed

    def get_safe_cookies(self, request: HttpRequest) -> dict[str, Any]:
        return {
            name: self.cleansed_substitute if name.startswith(SECRET_COOKIE_PREFIX) else value
            for name, value in super().get_safe_cookies(request).items()
        }

    def get_cleansed_multivaluedict(
        self, request: HttpRequest, multivaluedict: MultiValueDict
    ) -> MultiValueDict:
        cleansed = super().get_cleansed_multivaluedict(request, multivaluedict)
        return self.without_secret_parameters(cleansed)

    def without_secret_parameters(self, query: MultiValueDict) -> MultiValueDict:
        if not any(name in query for name in SECRET_QUERY_PARAMETERS):
            return query
        query = query.copy()
        for name in SECRET_QUERY_PARAMETERS:
            if name in query:
                query.setlist(name, [self.cleansed_substitute])
        return query

    def cleanse_special_types(self, request: HttpRequest | None, value: Any) -> Any:
        if isinstance(value, HttpRequest):
            # A request's text is "<ASGIRequest: GET '/providers/ohif/launch?code=…'>".
            return redact(repr(value))
        if isinstance(value, str):
            return redact(value)
        return super().cleanse_special_types(request, value)


class SecretsExceptionReporter(ExceptionReporter):
    """Django's report, with the request's URL and GET parameters cleansed, and secret
    parameters redacted wherever a variable's text quotes a URL (a request in a tuple…)."""

    def get_traceback_data(self) -> dict[str, Any]:
        data = super().get_traceback_data()
        for frame in data["frames"]:
            if "vars" in frame:
                frame["vars"] = [(name, redact(text)) for name, text in frame["vars"]]
        if self.request is not None and isinstance(self.filter, SecretsFilter):
            query = self.request.GET
            if isinstance(query, QueryDict):
                data["request_GET_items"] = self.filter.without_secret_parameters(query).items()
            data["request_insecure_uri"] = redact(data["request_insecure_uri"])
            # The template reads a few of its attributes; a failed lookup there logs the
            # whole context (django.template, DEBUG), the request's text with it.
            data["request"] = _RedactedRequest(self.request)
        return data


class _RedactedRequest:
    """The request, as the report's template reads it; its text without secret values."""

    def __init__(self, request: HttpRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def __repr__(self) -> str:
        return redact(repr(self._request))


def redact(text: str) -> str:
    # str(): a lazy setting (django-axes has some) passes for a str but is not one to re.
    return SECRET_VALUES.sub(r"\1[redacted]", str(text))
