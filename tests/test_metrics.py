"""GET /metrics (Prometheus): who may read it, that it parses, and that its values move."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from launcher.models import Provider, TokenDelivery
from tests.fakes import STUDY_1, FakeKheops, launch_and_exchange

TOKEN = "metrics-token-for-tests-0123456789abcdef"
VIEWER = "viewer.test"
ADMIN = "admin.viewer.test"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def metrics_token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    settings.ADMIN_HOSTS = []
    return TOKEN


def scrape(client: Client, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels); fails unless it answers and parses."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


MULTIPROCESS_WORKER = textwrap.dedent(
    """
    import django, os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "kheops_ohif.settings"
    django.setup()
    from launcher import metrics
    metrics.GrantsCollector.collect = lambda self: iter(())  # no database here
    if sys.argv[1] == "launch":
        metrics.LAUNCHES.labels("pending").inc()
        metrics.RELAY_STREAMS.inc()
    else:
        sys.stdout.write(metrics.exposition().decode())
    """
)
MULTIPROCESS_ENV = {
    "PATH": "/usr/bin:/bin",
    "SECRET_KEY": "x" * 50,
    "DEBUG": "false",
}


# --- Who may read it ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_with_neither_admin_hosts_nor_a_token_there_is_no_such_page(
    client: Client, settings: Any
) -> None:
    settings.METRICS_TOKEN = ""
    settings.ADMIN_HOSTS = []

    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


@pytest.mark.django_db
def test_the_right_token_reads_them_a_wrong_or_missing_one_is_refused(
    client: Client, metrics_token: str
) -> None:
    assert scrape(client)  # the right token: 200, parses

    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    missing = client.get("/metrics")
    basic = client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})

    for refused in (wrong, missing, basic):
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"].startswith("Bearer")
        assert b"kheops_ohif" not in refused.content
        assert "no-cache" in refused["Cache-Control"] or "no-store" in refused["Cache-Control"]


@pytest.fixture
def split_hosts(settings: Any) -> None:
    settings.PUBLIC_HOST = VIEWER
    settings.ALLOWED_HOSTS = [VIEWER, ADMIN]
    settings.ADMIN_HOSTS = [ADMIN]


@pytest.mark.django_db
@pytest.mark.usefixtures("split_hosts")
def test_on_admin_hosts_they_answer_there_only(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = ""

    on_admin = client.get("/metrics", HTTP_HOST=ADMIN)
    on_viewer = client.get("/metrics", HTTP_HOST=VIEWER)

    assert on_admin.status_code == 200
    assert b"kheops_ohif_launches_total" in on_admin.content or b"# HELP" in on_admin.content
    assert on_viewer.status_code == 404


@pytest.mark.django_db
@pytest.mark.usefixtures("split_hosts")
def test_with_admin_hosts_and_a_token_the_token_works_on_the_viewer_host(
    client: Client, settings: Any
) -> None:
    settings.METRICS_TOKEN = TOKEN

    with_token = client.get(
        "/metrics", HTTP_HOST=VIEWER, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    without = client.get("/metrics", HTTP_HOST=VIEWER)
    wrong_on_admin = client.get("/metrics", HTTP_HOST=ADMIN, headers={"Authorization": "Bearer no"})

    assert with_token.status_code == 200
    assert without.status_code == 401
    assert wrong_on_admin.status_code == 401  # a wrong credential is refused, host or not
    assert client.get("/metrics", HTTP_HOST=ADMIN).status_code == 200


def test_metrics_token_file_is_read(tmp_path: Path) -> None:
    from tests.test_settings_and_health import STRONG_KEY, run_django

    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN + "\n")
    result = run_django(
        ["shell", "-c", "from django.conf import settings; print(len(settings.METRICS_TOKEN))"],
        SECRET_KEY=STRONG_KEY,
        METRICS_TOKEN_FILE=str(token_file),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(len(TOKEN))


# --- What they say -----------------------------------------------------------------------------


def test_a_launch_and_its_exchange_move_the_counters_and_leave_no_secret(
    client: Client, fake_kheops: FakeKheops, metrics_token: str
) -> None:
    before = scrape(client)

    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    assert launch.status_code == 302 and token.status_code == 200
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    after = scrape(client)
    assert moved(before, after, "kheops_ohif_launches_total", outcome="pending") == 1
    assert moved(before, after, "kheops_ohif_exchanges_total", outcome="success") == 1
    assert moved(before, after, "kheops_ohif_exchange_seconds_count") == 1
    for call in ("discovery", "token", "userinfo"):
        assert moved(before, after, "kheops_ohif_kheops_request_seconds_count", call=call) == 1
    assert value(after, "kheops_ohif_grants", state="active") == 1
    assert value(after, "kheops_ohif_grants", state="pending") == 0
    text = response.content.decode()
    assert fake_kheops.secrets_seen
    for secret in fake_kheops.secrets_seen:
        assert secret not in text


def test_a_pending_grant_and_a_replay_are_counted(
    client: Client, fake_kheops: FakeKheops, metrics_token: str
) -> None:
    before = scrape(client)
    url = fake_kheops.launch_url()

    assert client.get(url).status_code == 302
    assert Client().get(url).status_code == 409  # another browser: a replay

    after = scrape(client)
    assert moved(before, after, "kheops_ohif_launches_total", outcome="pending") == 1
    assert moved(before, after, "kheops_ohif_launches_total", outcome="replay") == 1
    assert value(after, "kheops_ohif_grants", state="pending") == 1
    assert value(after, "kheops_ohif_grants", state="active") == 0


@pytest.mark.parametrize(
    ("answer", "kind", "outcome"),
    [
        pytest.param((400, {"error": "invalid_grant"}), "rejected", "code_rejected", id="rejected"),
        pytest.param(httpx.ReadTimeout("slow"), "timeout", "kheops_timeout", id="timeout"),
        pytest.param((503, {}), "unavailable", "kheops_unavailable", id="unavailable"),
        pytest.param((200, ["not", "a", "token"]), "malformed", "kheops_malformed", id="malformed"),
    ],
)
def test_kheops_errors_are_counted_by_kind(
    client: Client,
    fake_kheops: FakeKheops,
    metrics_token: str,
    answer: Any,
    kind: str,
    outcome: str,
) -> None:
    fake_kheops.token_answer = answer
    before = scrape(client)

    launch_and_exchange(client, fake_kheops.launch_url())

    after = scrape(client)
    assert moved(before, after, "kheops_ohif_kheops_errors_total", call="token", kind=kind) == 1
    assert moved(before, after, "kheops_ohif_exchanges_total", outcome=outcome) == 1
    assert moved(before, after, "kheops_ohif_exchanges_total", outcome="success") == 0


def test_rate_limits_do_not_apply_to_them(
    client: Client, fake_kheops: FakeKheops, metrics_token: str, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = (1, 3600)
    settings.TOKEN_RATE_LIMIT = (1, 3600)
    assert client.get(fake_kheops.launch_url()).status_code == 302
    assert client.get(fake_kheops.launch_url()).status_code == 429  # the limits are on

    for _ in range(5):
        samples = scrape(client)

    assert value(samples, "kheops_ohif_launches_total", outcome="rate_limited") >= 1


def test_the_relay_counts_its_streams_and_bytes(
    client: Client,
    fake_kheops: FakeKheops,
    metrics_token: str,
    provider: Provider,
    launched: Callable[..., str],
) -> None:
    from tests.test_relay import ask, launch_id_of

    provider.token_delivery = TokenDelivery.RELAY
    provider.save()
    root = f"/launches/{launch_id_of(launched())}/dicomweb"
    body = json.dumps([{"0020000D": {"vr": "UI", "Value": [STUDY_1]}}]).encode()

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "application/dicom+json"}, content=body)

    fake_kheops.dicomweb_answer = answer
    before = scrape(client)

    relayed = ask(client, f"{root}/studies/{STUDY_1}/series")

    after = scrape(client)
    assert relayed.status == 200 and relayed.body == body
    assert moved(before, after, "kheops_ohif_relay_bytes_total", direction="down") == len(body)
    assert value(after, "kheops_ohif_relay_streams_in_flight") == 0


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: each process writes its own file, a scrape sums them."""

    def run(role: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_WORKER, role],
            cwd=REPO,
            env={**MULTIPROCESS_ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("launch")
    run("launch")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(run("scrape"))
        for s in family.samples
    }

    assert samples[("kheops_ohif_launches_total", (("outcome", "pending"),))] == 2
    # Both processes have exited without a graceful stop: their live gauges still count
    # until a server starting up forgets them (metrics.forget_dead_processes).
    assert samples[("kheops_ohif_relay_streams_in_flight", ())] == 2


def test_a_missing_multiprocess_directory_is_named_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_WORKER, "launch"],
        cwd=REPO,
        env={**MULTIPROCESS_ENV, "PROMETHEUS_MULTIPROC_DIR": str(missing)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert f"PROMETHEUS_MULTIPROC_DIR '{missing}' is not a directory" in result.stderr


def test_a_starting_server_forgets_the_live_gauges_of_dead_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher import metrics

    dead = tmp_path / "gauge_livesum_99999999.db"
    dead.write_bytes(b"")
    counter = tmp_path / "counter_99999999.db"
    counter.write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    metrics.forget_dead_processes()

    assert not dead.exists()
    assert counter.exists()


def test_a_short_metrics_token_is_refused_by_the_system_checks(settings: Any) -> None:
    from launcher.checks import check_metrics_token

    settings.METRICS_TOKEN = "abc123xyz"
    [error] = check_metrics_token(None)
    settings.METRICS_TOKEN = TOKEN

    assert error.id == "launcher.E016"
    assert "abc123xyz" not in error.msg + error.hint  # the token itself is never printed
    assert check_metrics_token(None) == []
