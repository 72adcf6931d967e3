"""Property-based tests (Hypothesis) of the launch: its query string, and KHEOPS's answers.

A launch is two requests: the launch URL (checked, discovery fetched when not cached, then a
redirect to the viewer) and the viewer's token request, which exchanges the code. Each
KHEOPS answer is judged where it is consumed: the discovery document's at the launch, the
token endpoint's and userinfo's at the token request.

The properties, for any input:
- the launch answers a redirect to the viewer or one of our deliberate refusals: 400, 403,
  404, 409 for the request, 502 (KHEOPS unavailable or not understood) and 504 (KHEOPS too
  slow) for upstream failures — never a 500 and never an unhandled exception (the test
  client re-raises those);
- the token request answers the token (200) or a deliberate JSON refusal (403, 502, 504),
  and the viewer page then shows the same refusal as its error page;
- every attempt leaves exactly one audit record, with the outcome of the answer;
- no code, token or assertion appears in a page, a JSON error or the headers, and the token
  answer carries KHEOPS's token and nothing else secret (the leak check, tests/leakcheck.py,
  also scans logs and rows);
- our server calls nothing but the trusted KHEOPS.

Example counts stay modest: the suite runs twice in CI. `database=None`: no example
database is written into the checkout.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from launcher import services
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
    fake_code,
    token_url_of,
)

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REQUEST_REFUSALS = {400, 403, 404, 409}
UPSTREAM_FAILURES = {502, 504}
OUTCOMES = {
    302: {LaunchOutcome.PENDING},
    200: {LaunchOutcome.SUCCESS},
    403: {LaunchOutcome.CODE_REJECTED},
    502: {LaunchOutcome.KHEOPS_UNAVAILABLE, LaunchOutcome.KHEOPS_MALFORMED},
    504: {LaunchOutcome.KHEOPS_TIMEOUT},
}

# --- the launch query string ------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(
        ["code", "conf_uri", "client_id", "studyUID", "return_uri", "token", "StudyInstanceUIDs"]
    ),
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
VALUES = st.one_of(
    INTERESTING_VALUES, st.text(max_size=60), st.integers(2001, 9000).map(lambda n: "v" * n)
)
# A code is secret: never one of the public values above (a code equal to a study UID would
# "leak" into the viewer URL). Hostile codes still come: scripts, NULs, huge ones.
CODE_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["<script>alert(1)</script>", "\x00", "%00", "\u2028", "c" * 9000]),
    st.text(max_size=20).map(lambda t: fake_code() + t),
)
RAW_GARBAGE = st.text(alphabet="%&=;+?#abcdef0123456789XYZ-._~", max_size=40)


def valid_params() -> list[tuple[str, str]]:
    # A fresh code per example: KHEOPS's codes are opaque, and a repeated one is a replay.
    return [
        ("code", fake_code()),
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


def forget_discovery() -> None:
    # The discovery document is cached between launches: shared (the cache) and, for a
    # few seconds, by each process (services' lookups). An example starts with neither.
    cache.clear()
    services.forget_lookups()


def assert_properly_answered(
    response: Any, fake: FakeKheops, records_before: int, *, allowed: set[int]
) -> None:
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    assert LaunchRecord.objects.count() == records_before + 1, "one audit record per attempt"
    shown = response.content.decode("utf-8", "replace") + repr(sorted(response.items()))
    for secret in fake.secrets_seen:
        assert secret not in shown
    assert_only_kheops_called(fake)
    if response.status_code != 302:
        assert "Cannot open the viewer" in shown


def assert_only_kheops_called(fake: FakeKheops) -> None:
    for call in fake.router.calls:
        assert str(call.request.url).startswith(ROOT + "/"), call.request.url


def assert_token_properly_answered(
    client: Client,
    viewer_url: str,
    fake: FakeKheops,
    records_before: int,
    *,
    token_answer: Any = None,
) -> int:
    """The viewer's token request: the token, or a deliberate refusal that its page repeats.

    `token_answer`: what the token endpoint answers, if not the fake's own. Returns the status."""
    issued_before = len(fake.issued_tokens)

    response = client.get(token_url_of(viewer_url))

    assert response.status_code in {200, 403} | UPSTREAM_FAILURES, (
        response.status_code,
        response.content[:300],
    )
    assert response["Content-Type"].startswith("application/json")
    assert "no-store" in response["Cache-Control"]
    assert LaunchRecord.objects.count() == records_before + 1, "one audit record per attempt"
    assert_only_kheops_called(fake)
    body = response.json()
    if response.status_code == 200:
        assert set(body) == {"authorization", "expiresIn", "userName", "userEmail"}
        if token_answer is None:
            [access_token] = fake.issued_tokens[issued_before:]
        else:
            access_token = token_answer[1]["access_token"]
        assert body.pop("authorization") == f"Bearer {access_token}"
        # KHEOPS's lifetime, capped at a day; 0 for a token that expires within the second.
        assert isinstance(body["expiresIn"], int) and 0 <= body["expiresIn"] <= 24 * 3600
    else:
        assert set(body) == {"error", "advice", "returnUri", "retryable"}
        assert isinstance(body["error"], str) and body["error"]
    # Apart from the token it must carry, nothing secret: neither the code nor the
    # assertion, and no token in a refusal (decoded too: JSON escapes what is not ASCII).
    shown = json.dumps(body, ensure_ascii=False) + repr(sorted(response.items()))
    if response.status_code != 200:
        shown += response.content.decode("utf-8", "replace")
    for secret in fake.secrets_seen:
        assert secret not in shown
    if response.status_code != 200:
        page = client.get(viewer_url)
        text = page.content.decode("utf-8", "replace")
        if body["retryable"]:  # KHEOPS slow or away: the viewer stays, launch.js asks again
            assert page.status_code == 200
        else:
            assert page.status_code == response.status_code
            assert "Cannot open the viewer" in text
        for secret in fake.secrets_seen:
            assert secret not in text + repr(sorted(page.items()))
    return response.status_code


@FUZZ_SETTINGS
@given(query=launch_queries())
def test_any_launch_query_gets_a_deliberate_answer(
    client: Client, fake_kheops: FakeKheops, query: str
) -> None:
    forget_discovery()
    client.cookies.clear()  # a fresh browser per example
    before = LaunchRecord.objects.count()

    response = client.get(f"/providers/ohif/launch?{query}")

    assert_properly_answered(response, fake_kheops, before, allowed={302} | REQUEST_REFUSALS)
    if response.status_code == 302:
        # An accepted launch: its viewer's token request exchanges whatever code it carried.
        assert (
            assert_token_properly_answered(client, response["Location"], fake_kheops, before) == 200
        )
        assert LaunchRecord.objects.order_by("-id").first().outcome == LaunchOutcome.SUCCESS


# --- KHEOPS's answers -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
STATUSES = st.one_of(
    st.just(200),
    st.sampled_from([201, 204, 302, 400, 401, 403, 404, 429, 500, 502, 503]),
    st.integers(200, 599),
)
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
RAW_BODIES = st.one_of(
    st.text(max_size=200), st.just(""), st.just("{"), st.just("null"), st.just('{"a":' * 50)
)


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
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": draw(st.one_of(st.integers(), JSON)),
        }
        if draw(st.booleans()):
            body["error"] = draw(
                st.one_of(
                    st.sampled_from(["invalid_request", "invalid_grant", "invalid_client"]), JSON
                )
            )
        return status, body
    return status, draw(JSON if kind == "json" else RAW_BODIES)


@st.composite
def userinfo_answers(draw: st.DrawFn) -> tuple[int, Any] | None:
    kind = draw(st.sampled_from(["right", "fields", "json", "raw"]))
    if kind == "right":
        return None
    status = draw(STATUSES)
    if kind == "fields":
        text = st.one_of(
            st.text(max_size=300),
            JSON,
            st.sampled_from(["a\x00b", "line\nbreak", "<script>x</script>"]),
        )
        return status, {"sub": draw(text), "name": draw(text), "email": draw(text)}
    return status, draw(JSON if kind == "json" else RAW_BODIES)


@settings(FUZZ_SETTINGS, max_examples=80)
@given(discovery=discovery_answers(), token=token_answers(), userinfo=userinfo_answers())
# Found by this test on PostgreSQL, which cannot store NUL: the audit record, and the
# exchange, failed.
@example(
    discovery=None,
    token=None,
    userinfo=(200, {"sub": "a\x00b", "name": "Dr\x00X", "email": "e\nf"}),
)
# Found by this test: a token that is not one an HTTP header can carry (RFC 6750's
# b64token) broke the userinfo call, and would break every relayed request.
@example(
    discovery=None,
    token=(200, {"access_token": "eyJfuzztoken.NJDClsj6xWs\x80", "expires_in": 1}),
    userinfo=None,
)
def test_any_kheops_answer_gets_a_deliberate_answer(
    client: Client, fake_kheops: FakeKheops, discovery: Any, token: Any, userinfo: Any
) -> None:
    forget_discovery()  # so that every example's discovery answer is consumed
    client.cookies.clear()
    fake_kheops.discovery_answer, fake_kheops.token_answer, fake_kheops.userinfo_answer = (
        discovery,
        token,
        userinfo,
    )
    if token is not None and isinstance(token[1], dict):
        access_token = token[1].get("access_token")
        if isinstance(access_token, str) and access_token.startswith("eyJfuzztoken."):
            fake_kheops.secrets_seen.append(access_token)  # a fuzzed but real-looking token
    before = LaunchRecord.objects.count()
    exchanges = len(fake_kheops.token_requests)  # the fixtures outlive an example

    # The discovery answer is consumed here: the launch needs its DICOMweb root.
    response = client.get(fake_kheops.launch_url(studies=(STUDY_1, STUDY_2)))

    assert_properly_answered(response, fake_kheops, before, allowed={302, 403} | UPSTREAM_FAILURES)
    assert len(fake_kheops.token_requests) == exchanges, (
        "the launch itself never exchanges the code"
    )
    status = response.status_code
    if status == 302:
        # The token and userinfo answers are consumed here, by the viewer's token request.
        status = assert_token_properly_answered(
            client, response["Location"], fake_kheops, before, token_answer=token
        )
        # At most one exchange (none when the discovery document moved the token endpoint).
        assert len(fake_kheops.token_requests) <= exchanges + 1
    record = LaunchRecord.objects.order_by("-id").first()
    assert record.outcome in OUTCOMES[status], (status, record.outcome)
    if status == 200:
        assert "\x00" not in record.user_name + record.user_sub + record.user_email
