"""Leak check: no code, token, assertion or private key in logs, headers, pages or rows.

Hooked from `tests/conftest.py`, it watches the whole test run:

- **Secrets** are registered where they come to exist, at our app's boundaries: the `code`
  parameter of every request our app receives, every client assertion we sign, every
  access token KHEOPS (fake or stand-in) gives us, every value we seal (the code and
  the KHEOPS token in a viewer grant, the private signing keys, line by line), and for the
  admin's sign-in through OpenID Connect the client secret we send to the provider and the
  ID, access and refresh tokens it answers.
- **What is scanned**: every log record (DEBUG and up; the root logger is set to DEBUG)
  written by our app, Django, or anything while our app handles a request; every response
  header (Location, Set-Cookie, …) and every HTML (the viewer page with its launch data),
  plain-text, JavaScript or JSON body our app sends; and, after each test that touches the
  database and before its state is rolled back, every row of every table, with
  `django_session` rows decoded.
- **Not scanned**, because the protocol puts secrets there on purpose: the successful
  answer of a viewer's token request (`/launches/<id>/token`, the one place the browser is
  given the token; its error answers are scanned), the launch URL (it carries the code) and
  the requests our app sends to KHEOPS.

A test whose run leaks fails right away; `pytest_sessionfinish` reports every leak found
(the first ones in full) and fails the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest

MIN_SECRET_LENGTH = 16
# A secret is random: a long run of few distinct characters ("aaaa…") is a test value.
MIN_DISTINCT_CHARACTERS = 6
REPORTED_LEAKS = 10
# Where a launch could store something: our tables, sessions and the admin's change log.
SCANNED_APPS = {"launcher", "sessions", "admin", "auth", "axes"}
# Loggers whose records are ours or Django's wherever they are written; any other logger's
# records are scanned only while our app handles a request (the test's own HTTP client
# logs the launch URL, code included, as a browser's history would hold it).
APP_LOGGERS = ("launcher", "kheops_ohif", "django", "uvicorn", "httpx")
# Response bodies read for secrets: pages (the viewer's launch data), scripts and JSON answers.
SCANNED_CONTENT_TYPES = (
    "text/html",
    "text/plain",
    "text/javascript",
    "application/javascript",
    "application/json",
)
# The view whose successful answer carries the token to the viewer, by design.
TOKEN_VIEW = "viewer-token"


@dataclass(frozen=True)
class Leak:
    where: str
    secret_kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.secret_kind} found in {self.where}: …{self.excerpt}…"


@dataclass
class LeakCheck:
    """The registry of secrets and what was seen during the current test."""

    secrets: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    secrets_total: int = 0
    texts_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, value: Any, kind: str) -> None:
        if not isinstance(value, str):
            return
        candidates = [value]
        if "PRIVATE KEY" in value:
            candidates += [line.strip() for line in value.splitlines() if len(line.strip()) >= 40]
        with self.lock:
            for candidate in candidates:
                if (
                    len(candidate) >= MIN_SECRET_LENGTH
                    and len(set(candidate)) >= MIN_DISTINCT_CHARACTERS
                ):
                    self.secrets.setdefault(candidate, kind)

    def see(self, where: str, text: str) -> None:
        if text:
            with self.lock:
                self.seen.append((where, text))

    def scan(self, extra: list[tuple[str, str]] = ()) -> list[Leak]:
        """Scan what was seen (plus `extra`) against the secrets; forget both.

        Each test is scanned against the secrets produced during it: nothing carries a
        secret from one test to the next (cache, loaded key and database are reset).
        """
        with self.lock:
            seen, self.seen = self.seen, []
            secrets, self.secrets = self.secrets, {}
            self.secrets_total += len(secrets)
            self.texts_total += len(seen) + len(extra)
        found = []
        for where, text in [*seen, *extra]:
            for secret, kind in secrets.items():
                index = text.find(secret)
                if index >= 0:
                    start = max(0, index - 40)
                    found.append(Leak(where, kind, text[start : index + 12]))
        self.leaks += found
        return found


CHECK = LeakCheck()
_in_request = threading.local()


class _CollectingHandler(logging.Handler):
    def __init__(self, check: LeakCheck) -> None:
        super().__init__(level=logging.DEBUG)
        self.check = check
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_in_request, "active", False) or record.name.startswith(APP_LOGGERS):
            try:
                self.check.see(f"log record of {record.name!r}", self.format(record))
            except Exception:  # a record that cannot be formatted is a bug elsewhere
                self.handleError(record)


def _wrap(
    owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    original = getattr(owner, name)
    if getattr(original, "_leakcheck", False):
        return
    wrapped = wrapper(original)
    wrapped._leakcheck = True  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def _gives_the_token(request: Any, response: Any) -> bool:
    match = getattr(request, "resolver_match", None)
    return match is not None and match.url_name == TOKEN_VIEW and response.status_code == 200


def _watch_responses(check: LeakCheck) -> None:
    from django.core.handlers.base import BaseHandler

    def before(request: Any) -> None:
        for name, value in parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True):
            if name == "code":
                check.register(value, "launch code")

    def after(request: Any, response: Any) -> None:
        where = f"response to {request.method} {request.path}"
        for header, value in response.items():
            check.see(f"{where}, header {header}", f"{header}: {value}")
        for morsel in response.cookies.values():
            check.see(f"{where}, Set-Cookie", morsel.OutputString())
        content_type = response.get("Content-Type", "")
        if (
            not response.streaming
            and content_type.startswith(SCANNED_CONTENT_TYPES)
            and not _gives_the_token(request, response)
        ):
            check.see(f"{where}, body", response.content.decode("utf-8", "replace"))

    def wrapper(get_response: Callable[..., Any]) -> Callable[..., Any]:
        def get_response_watched(self: Any, request: Any) -> Any:
            before(request)
            _in_request.active = True
            try:
                response = get_response(self, request)
            finally:
                _in_request.active = False
            after(request, response)
            return response

        return get_response_watched

    def async_wrapper(get_response_async: Callable[..., Any]) -> Callable[..., Any]:
        # The ASGI server's path (the live stack, uvicorn).
        async def get_response_watched(self: Any, request: Any) -> Any:
            before(request)
            response = await get_response_async(self, request)
            after(request, response)
            return response

        return get_response_watched

    _wrap(BaseHandler, "get_response", wrapper)
    _wrap(BaseHandler, "get_response_async", async_wrapper)


def _watch_secrets(check: LeakCheck) -> None:
    from django.views.decorators.debug import sensitive_variables

    from launcher import keys, kheops, oidc, sealing

    def assertion_wrapper(client_assertion: Callable[..., str]) -> Callable[..., str]:
        def watched(*args: Any, **kwargs: Any) -> str:
            assertion = client_assertion(*args, **kwargs)
            check.register(assertion, "client assertion")
            return assertion

        return watched

    def exchange_wrapper(exchange_code: Callable[..., Any]) -> Callable[..., Any]:
        # Its frame holds what exchange_code's does, and sits in the tracebacks of the
        # exchange (tests/test_error_reports.py). Marking a coroutine hides its own frame only.
        @sensitive_variables()
        async def watched(*args: Any, **kwargs: Any) -> Any:
            check.register(kwargs.get("code"), "launch code")
            grant = await exchange_code(*args, **kwargs)
            check.register(grant.access_token, "KHEOPS access token")
            return grant

        return watched

    def seal_wrapper(seal: Callable[..., str]) -> Callable[..., str]:
        def watched(value: str, *, purpose: str) -> str:
            check.register(value, f"sealed {purpose}")
            return seal(value, purpose=purpose)

        return watched

    def oidc_token_wrapper(get_token: Callable[..., Any]) -> Callable[..., Any]:
        @sensitive_variables()
        def watched(self: Any, payload: dict[str, Any]) -> Any:
            check.register(payload.get("client_secret"), "OpenID Connect client secret")
            answer = get_token(self, payload)
            for name in ("id_token", "access_token", "refresh_token"):
                check.register(answer.get(name), f"OpenID Connect {name}")
            return answer

        return watched

    _wrap(oidc.AdminOidcBackend, "get_token", oidc_token_wrapper)
    _wrap(keys, "client_assertion", assertion_wrapper)
    _wrap(kheops, "exchange_code", exchange_wrapper)
    _wrap(sealing, "seal", seal_wrapper)


def install(check: LeakCheck = CHECK) -> None:
    """Capture logs at DEBUG and watch responses and secrets (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, _CollectingHandler) for h in root.handlers):
        # The console handler keeps its former threshold: DEBUG is for the check, not the output.
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.level == logging.NOTSET:
                handler.setLevel(logging.INFO)
        root.addHandler(_CollectingHandler(check))
    root.setLevel(logging.DEBUG)
    for name in APP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    _watch_responses(check)
    _watch_secrets(check)


def stored_rows() -> list[tuple[str, str]]:
    """Every row of our tables (and sessions, admin log), as text; session data decoded."""
    from django.apps import apps
    from django.contrib.sessions.models import Session

    rows = []
    for model in apps.get_models():
        if model._meta.app_label not in SCANNED_APPS:
            continue
        for row in model._default_manager.values_list():
            rows.append((f"row of {model._meta.db_table}", repr(row)))
    for session in Session.objects.all():
        rows.append(("decoded django_session row", repr(session.get_decoded())))
    return rows


def _rows_if_reachable(item: pytest.Item) -> list[tuple[str, str]]:
    if not CHECK.secrets:
        return []  # nothing secret was produced: nothing to look for
    uses_db = item.get_closest_marker("django_db") is not None or any(
        name in getattr(item, "fixturenames", ())
        for name in ("_django_db_helper", "db", "transactional_db")
    )
    if not uses_db:
        return []
    from django.db import DatabaseError

    try:
        return stored_rows()
    except (RuntimeError, DatabaseError):
        # Database access blocked, or the test left its transaction broken: nothing to read.
        return []


# --- pytest hooks, imported by tests/conftest.py --------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _leakcheck_installed() -> None:
    install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # Anything that ran django.setup() again (an ASGI application made by
    # get_asgi_application) configured logging anew, without our handlers.
    install()
    try:
        result = yield
    except BaseException:
        CHECK.scan(_rows_if_reachable(item))  # recorded for the final report
        raise
    leaks = CHECK.scan(_rows_if_reachable(item))
    if leaks:
        raise AssertionError(
            "secrets leaked:\n" + "\n".join(str(leak) for leak in leaks[:REPORTED_LEAKS])
        )
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    CHECK.scan()  # what was logged after the last test's call
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and CHECK.secrets_total:
        reporter.write_line(
            f"leak check: {CHECK.secrets_total} secrets looked for in {CHECK.texts_total} "
            f"log records, headers, pages and rows; {len(CHECK.leaks)} leak(s)"
        )
    if not CHECK.leaks:
        return
    lines = [f"leak check: {len(CHECK.leaks)} secret(s) leaked; the first ones:"]
    lines += [f"  {leak}" for leak in CHECK.leaks[:REPORTED_LEAKS]]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
