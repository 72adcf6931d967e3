"""LOG_FORMAT=json: one JSON object a line, with the request's id, and still no secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils.module_loading import import_string

from launcher.serving import Application
from tests.asgi_calls import http_scope
from tests.fakes import FakeKheops
from tests.test_asgi import (  # noqa: F401 (a fixture, autouse here too)
    _keep_the_test_transaction,
    prepared_application,
)


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """A handler made as LOG_FORMAT=json configures it, on the `launcher` logger; its lines."""
    from kheops_ohif.settings import logging_config

    config = logging_config(level="DEBUG", log_format="json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(import_string(config["formatters"]["json"]["()"])())
    for name in config["handlers"]["console"]["filters"]:
        handler.addFilter(import_string(config["filters"][name]["()"])())
    assert config["handlers"]["console"]["formatter"] == "json"
    logger = logging.getLogger("launcher")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def get(app: Application, path: str, **headers: str) -> int:
    """One GET straight through the ASGI application (no HTTP client: its own log lines
    would quote the launch URL); the status."""
    return int(answer(app, path, **headers)["status"])


def answer(app: Application, path: str, **headers: str) -> dict[str, Any]:
    """The same; the answer's start message (status, headers)."""
    target, _, query = path.partition("?")
    scope = http_scope(
        "GET",
        target,
        query=query,
        headers=[(name.lower().encode(), value.encode()) for name, value in headers.items()],
    )
    sent: list[dict[str, Any]] = []
    bodies = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if bodies:
            return bodies.pop()
        await asyncio.Event().wait()  # the browser never goes away
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async_to_sync(app)(scope, receive, send)
    return sent[0]


def test_a_line_is_a_json_object_with_the_usual_fields_and_no_code(json_lines: Any) -> None:
    logging.getLogger("launcher.test").warning(
        "GET %s failed", "/providers/ohif/launch?code=eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln&x=1"
    )

    [line] = json_lines()
    assert line["level"] == "WARNING"
    assert line["logger"] == "launcher.test"
    assert line["message"] == "GET /providers/ohif/launch?code=[redacted]&x=1 failed"
    assert line["request_id"] == "-"  # outside any request
    assert "time" in line


def test_only_the_known_fields_are_written_never_a_record_s_extras(json_lines: Any) -> None:
    class Request:
        def __repr__(self) -> str:
            return "<ASGIRequest: GET '/providers/ohif/launch?code=SECRET'>"

    logging.getLogger("launcher.test").error("Bad Gateway", extra={"request": Request()})

    [line] = json_lines()
    assert set(line) <= {"time", "level", "logger", "message", "request_id", "exc_info"}
    assert "SECRET" not in json.dumps(line)


def test_every_line_of_one_request_carries_its_id_and_requests_differ(
    db: None, fake_kheops: FakeKheops, json_lines: Any
) -> None:
    app: Application = prepared_application()

    assert get(app, fake_kheops.launch_url()) == 302
    assert get(app, fake_kheops.launch_url()) == 302

    lines = [line for line in json_lines() if "accepted" in line["message"]]
    assert len(lines) == 2
    first, second = (line["request_id"] for line in lines)
    assert first != "-" and second != "-" and first != second
    assert len(first) == 32


def test_a_well_formed_request_id_from_the_proxy_is_kept_another_is_replaced(
    db: None, fake_kheops: FakeKheops, json_lines: Any, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1  # behind a proxy of ours (nginx: $request_id)
    app: Application = prepared_application()

    get(app, fake_kheops.launch_url(), **{"X-Request-ID": "a1b2c3d4e5f6a7b8"})
    get(app, fake_kheops.launch_url(), **{"X-Request-ID": "bad id!"})

    kept, replaced = (line["request_id"] for line in json_lines() if "accepted" in line["message"])
    assert kept == "a1b2c3d4e5f6a7b8"
    # A fresh id of our own (32 hex digits: "bad" could be in one by chance, "bad id!" not).
    assert re.fullmatch(r"[0-9a-f]{32}", replaced), replaced


def test_the_answer_names_its_request_id_the_proxys_when_behind_one(
    db: None, fake_kheops: FakeKheops, json_lines: Any, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    app: Application = prepared_application()

    launch = answer(app, fake_kheops.launch_url(), **{"X-Request-ID": "a1b2c3d4e5f6a7b8"})
    probe = answer(app, "/healthz", **{"X-Request-ID": "bad id!"})

    assert (b"x-request-id", b"a1b2c3d4e5f6a7b8") in launch["headers"]
    [fresh] = [value for name, value in probe["headers"] if name == b"x-request-id"]
    assert re.fullmatch(rb"[0-9a-f]{32}", fresh)
    [line] = [line for line in json_lines() if "accepted" in line["message"]]
    assert line["request_id"] == "a1b2c3d4e5f6a7b8"


def test_without_a_trusted_proxy_an_incoming_request_id_is_not_believed(
    db: None, fake_kheops: FakeKheops, json_lines: Any, settings: Any
) -> None:
    # TRUSTED_PROXY_COUNT=0: the header may come from anybody (a forged id to blur the logs).
    settings.TRUSTED_PROXY_COUNT = 0
    app: Application = prepared_application()

    launch = answer(app, fake_kheops.launch_url(), **{"X-Request-ID": "a1b2c3d4e5f6a7b8"})

    [sent] = [value for name, value in launch["headers"] if name == b"x-request-id"]
    assert sent != b"a1b2c3d4e5f6a7b8" and re.fullmatch(rb"[0-9a-f]{32}", sent)
    [line] = [line for line in json_lines() if "accepted" in line["message"]]
    assert line["request_id"] == sent.decode()


def test_an_unknown_log_format_is_refused_with_the_choices() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from kheops_ohif.settings import logging_config

    with pytest.raises(ImproperlyConfigured, match="LOG_FORMAT must be plain or json"):
        logging_config(level="INFO", log_format="xml")


def test_plain_stays_the_default(client: Client) -> None:
    from django.conf import settings

    assert settings.LOGGING["handlers"]["console"]["formatter"] == "plain"
