"""Property-based tests (Hypothesis) of the launch: its query string, and KHEOPS's answers.

The properties, for any input:
- the answer is a redirect to the viewer or one of our deliberate refusals: 400, 403, 404,
  409 for the request, 502 (KHEOPS unavailable or not understood) and 504 (KHEOPS too slow)
  for upstream failures — never a 500 and never an unhandled exception (the test client
  re-raises those);
- every attempt leaves exactly one audit record;
- no code, token or assertion appears in the page or the headers (and the leak check,
  tests/leakcheck.py, also scans logs and rows);
- our server calls nothing but the trusted KHEOPS.

Example counts stay modest: the suite runs twice in CI. `database=None`: no example
database is written into the checkout.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from launcher.models import LaunchOutcome, LaunchRecord
from tests.fakes import (
    ALBUM_ID,
    CLIENT_ID,
    DISCOVERY_URL,
    ROOT,
    STUDY_1,
    STUDY_2,
    FakeKheops,
    discovery_document,
)

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REQUEST_REFUSALS = {400, 403, 404, 409}
UPSTREAM_FAILURES = {502, 504}

# --- the launch query string ------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["code", "conf_uri", "client_id", "studyUID", "return_uri", "token", "StudyInstanceUIDs"]),
    st.text(max_size=12),
)
INTERESTING_VALUES = st.sampled_from(
    [
        DISCOVERY_URL,
        DISCOVERY_URL + "/",
        "http://169.254.169.254/latest/meta-data/",
        "https://kheops.test@evil.example/",
        f"{ROOT}/albums/{ALBUM_ID}",
        "javascript:alert(1)",
        "<script>alert(1)</script>",
        CLIENT_ID,
        STUDY_1,
        STUDY_1 + "\n",
        "1.02.3",
        "%00",
        "\x00",
        "\u2028",
        "A" * 70,
        "9" * 65,
    ]
)
VALUES = st.one_of(INTERESTING_VALUES, st.text(max_size=60), st.integers(2001, 9000).map(lambda n: "v" * n))
# A code is secret: never one of the public values above (a code equal to a study UID would
# "leak" into the viewer URL). Hostile codes still come: scripts, NULs, huge ones.
CODE_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["<script>alert(1)</script>", "\x00", "%00", "\u2028", "c" * 9000]),
    st.text(max_size=20).map(lambda t: "eyJfuzz." + secrets.token_urlsafe(12) + t),
)
RAW_GARBAGE = st.text(alphabet="%&=;+?#abcdef0123456789XYZ-._~", max_size=40)


def valid_params() -> list[tuple[str, str]]:
    # A fresh code per example: KHEOPS's codes are opaque, and a repeated one is a replay.
    return [
        ("code", "eyJfuzz." + secrets.token_urlsafe(18)),
        ("conf_uri", DISCOVERY_URL),
        ("client_id", CLIENT_ID),
        ("return_uri", f"{ROOT}/albums/{ALBUM_ID}"),
        ("studyUID", STUDY_1),
    ]


@st.composite
def launch_queries(draw: st.DrawFn) -> str:
    params = valid_params() if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop", "duplicate", "replace", "add"]))
        if action == "add" or not params:
            name = draw(NAMES)
            params.append((name, draw(CODE_VALUES if name == "code" else VALUES)))
            continue
        index = draw(st.integers(0, len(params) - 1))
        name, _ = params[index]
        value = draw(CODE_VALUES if name == "code" else VALUES)
        if action == "drop":
            del params[index]
        elif action == "duplicate":
            params.insert(index, (name, value))
        else:
            params[index] = (name, value)
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params)
    if draw(st.booleans()):
        query += "&" + draw(RAW_GARBAGE)  # not even well-formed percent-encoding
    return query


def assert_properly_answered(
    response: Any, fake: FakeKheops, records_before: int, *, allowed: set[int]
) -> None:
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    assert LaunchRecord.objects.count() == records_before + 1, "one audit record per attempt"
    shown = response.content.decode("utf-8", "replace") + repr(sorted(response.items()))
    for secret in fake.secrets_seen:
        assert secret not in shown
    for call in fake.rsps.calls:
        assert call.request.url.startswith(ROOT + "/"), call.request.url
    if response.status_code != 302:
        assert "Cannot open the viewer" in shown


@FUZZ_SETTINGS
@given(query=launch_queries())
def test_any_launch_query_gets_a_deliberate_answer(
    client: Client, fake_kheops: FakeKheops, query: str
) -> None:
    cache.clear()
    client.cookies.clear()  # a fresh browser per example
    before = LaunchRecord.objects.count()

    response = client.get(f"/providers/ohif/launch?{query}")

    assert_properly_answered(response, fake_kheops, before, allowed={302} | REQUEST_REFUSALS)


# --- KHEOPS's answers -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
STATUSES = st.one_of(st.just(200), st.sampled_from([201, 204, 302, 400, 401, 403, 404, 429, 500, 502, 503]), st.integers(200, 599))
URLS = st.one_of(
    st.sampled_from(
        [
            f"{ROOT}/api/token",
            f"{ROOT}/api",
            f"{ROOT}/api/elsewhere",
            "https://evil.example/api/token",
            "http://127.0.0.1/api/token",
            f"{ROOT}/api/../x",
            "https://kheops.test:1/api",
        ]
    ),
    JSON,
)
RAW_BODIES = st.one_of(st.text(max_size=200), st.just(""), st.just("{"), st.just("null"), st.just('{"a":' * 50))


@st.composite
def discovery_answers(draw: st.DrawFn) -> tuple[int, Any] | None:
    kind = draw(st.sampled_from(["right", "fields", "json", "raw"]))
    if kind == "right":
        return None
    status = draw(STATUSES)
    if kind == "fields":
        document = discovery_document()
        for name in draw(st.lists(st.sampled_from(sorted(document)), max_size=3)):
            document[name] = draw(URLS)
        return status, document
    return status, draw(JSON if kind == "json" else RAW_BODIES)


@st.composite
def token_answers(draw: st.DrawFn) -> tuple[int, Any] | None:
    kind = draw(st.sampled_from(["right", "fields", "json", "raw"]))
    if kind == "right":
        return None
    status = draw(STATUSES)
    if kind == "fields":
        token = draw(
            st.one_of(
                st.just("eyJfuzztoken." + secrets.token_urlsafe(24)),
                JSON,
                st.text(max_size=30).map(lambda t: "eyJfuzztoken." + secrets.token_urlsafe(8) + t),
            )
        )
        body: dict[str, Any] = {"access_token": token, "expires_in": draw(st.one_of(st.integers(), JSON))}
        if draw(st.booleans()):
            body["error"] = draw(st.one_of(st.sampled_from(["invalid_request", "invalid_grant", "invalid_client"]), JSON))
        return status, body
    return status, draw(JSON if kind == "json" else RAW_BODIES)


@st.composite
def userinfo_answers(draw: st.DrawFn) -> tuple[int, Any] | None:
    kind = draw(st.sampled_from(["right", "fields", "json", "raw"]))
    if kind == "right":
        return None
    status = draw(STATUSES)
    if kind == "fields":
        text = st.one_of(st.text(max_size=300), JSON, st.sampled_from(["a\x00b", "line\nbreak", "<script>x</script>"]))
        return status, {"sub": draw(text), "name": draw(text), "email": draw(text)}
    return status, draw(JSON if kind == "json" else RAW_BODIES)


@settings(FUZZ_SETTINGS, max_examples=80)
@given(discovery=discovery_answers(), token=token_answers(), userinfo=userinfo_answers())
# Found by this test on PostgreSQL, which cannot store NUL: the audit record, and the launch, failed.
@example(discovery=None, token=None, userinfo=(200, {"sub": "a\x00b", "name": "Dr\x00X", "email": "e\nf"}))
def test_any_kheops_answer_gets_a_deliberate_answer(
    client: Client, fake_kheops: FakeKheops, discovery: Any, token: Any, userinfo: Any
) -> None:
    cache.clear()  # the discovery document is cached between launches
    client.cookies.clear()
    fake_kheops.discovery_answer, fake_kheops.token_answer, fake_kheops.userinfo_answer = discovery, token, userinfo
    if token is not None and isinstance(token[1], dict):
        access_token = token[1].get("access_token")
        if isinstance(access_token, str) and access_token.startswith("eyJfuzztoken."):
            fake_kheops.secrets_seen.append(access_token)  # a fuzzed but real-looking token
    before = LaunchRecord.objects.count()

    response = client.get(fake_kheops.launch_url(studies=(STUDY_1, STUDY_2)))

    assert_properly_answered(response, fake_kheops, before, allowed={302, 403} | UPSTREAM_FAILURES)
    record = LaunchRecord.objects.order_by("-id").first()
    expected = {
        302: {LaunchOutcome.SUCCESS},
        403: {LaunchOutcome.CODE_REJECTED},
        502: {LaunchOutcome.KHEOPS_UNAVAILABLE, LaunchOutcome.KHEOPS_MALFORMED},
        504: {LaunchOutcome.KHEOPS_TIMEOUT},
    }[response.status_code]
    assert record.outcome in expected
    if response.status_code == 302:
        assert "\x00" not in record.user_name + record.user_sub + record.user_email
