"""The audit trail in the admin: filters, the CSV export, the integration-health panel."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx
from django.contrib.auth.models import Permission, User
from django.core.cache.backends import locmem
from django.test import Client
from django.utils import timezone

from launcher.models import KheopsServer, LaunchRecord, LaunchWrite, Provider
from tests.fakes import DISCOVERY_URL, STUDY_1, STUDY_2, discovery_document

OTHER_ROOT = "https://other.test"
OTHER_DISCOVERY = f"{OTHER_ROOT}/api/.well-known/report-provider-configuration"


@pytest.fixture
def record(kheops_server: KheopsServer, provider: Provider) -> Callable[..., LaunchRecord]:
    def make(age: timedelta = timedelta(0), **fields: Any) -> LaunchRecord:
        values: dict[str, Any] = {
            "kheops_server": kheops_server,
            "provider": provider,
            "outcome": "success",
            "study_uids": [STUDY_1],
            "user_name": "Dr Ada",
            **fields,
        }
        created = LaunchRecord.objects.create(**values)
        LaunchRecord.objects.filter(pk=created.pk).update(created_at=timezone.now() - age)
        return created

    return make


def export(
    client: Client, data: dict[str, Any], query: str = ""
) -> tuple[Any, list[dict[str, str]]]:
    response = client.post(
        f"/admin/launcher/launchrecord/{query}", {"action": "export_csv", **data}
    )
    assert response.status_code == 200, response.content[:300]
    text = b"".join(response.streaming_content).decode()
    return response, list(csv.DictReader(io.StringIO(text)))


# --- Browsing and filtering ----------------------------------------------------------


def test_launch_records_filter_by_server_provider_outcome_and_date(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    other = KheopsServer.objects.create(name="Other KHEOPS", root_url=OTHER_ROOT)
    record(user_name="Here today")
    record(kheops_server=other, user_name="Other server")
    record(outcome="replay", user_name="Replayed")
    record(age=timedelta(days=40), user_name="Last month")
    today = timezone.now().date()

    def names(query: str) -> set[str]:
        page = admin_client.get(f"/admin/launcher/launchrecord/?{query}").content.decode()
        return {n for n in ("Here today", "Other server", "Replayed", "Last month") if n in page}

    assert names(f"kheops_server__id__exact={other.pk}") == {"Other server"}
    assert names("outcome__exact=replay") == {"Replayed"}
    assert names("provider__id__exact=1") == {
        "Here today",
        "Other server",
        "Replayed",
        "Last month",
    }
    assert names(
        f"created_at__year={today.year}&created_at__month={today.month}&created_at__day={today.day}"
    ) == {"Here today", "Other server", "Replayed"}


def test_the_search_box_finds_a_study_uid_and_a_user(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    record(study_uids=[STUDY_2], user_name="Looked at study two", user_email="two@hospital.test")
    record(user_name="Looked at study one")

    by_study = admin_client.get("/admin/launcher/launchrecord/", {"q": STUDY_2}).content.decode()
    by_user = admin_client.get(
        "/admin/launcher/launchrecord/", {"q": "two@hospital"}
    ).content.decode()

    assert "Looked at study two" in by_study and "Looked at study one" not in by_study
    assert "Looked at study two" in by_user and "Looked at study one" not in by_user


# --- CSV export ----------------------------------------------------------------------


def test_the_csv_export_streams_the_selected_records(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    chosen = record(
        study_uids=[STUDY_1, STUDY_2],
        user_sub="sub-1",
        user_email="ada@hospital.test",
        album_id="Album1",
        remote_addr="192.0.2.7",
        launch_id="L1",
    )
    record(user_name="Not selected")

    response, rows = export(admin_client, {"_selected_action": [chosen.pk]})

    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="launch-records-')
    assert "no-store" in response["Cache-Control"]
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == str(chosen.pk)
    assert row["study_uids"] == f"{STUDY_1} {STUDY_2}"
    assert (row["kheops_server"], row["kheops_root_url"], row["provider"]) == (
        "KHEOPS test",
        "https://kheops.test",
        "ohif",
    )
    assert (row["user_sub"], row["user_name"], row["user_email"]) == (
        "sub-1",
        "Dr Ada",
        "ada@hospital.test",
    )
    assert (row["album_id"], row["remote_addr"], row["launch_id"], row["outcome"]) == (
        "Album1",
        "192.0.2.7",
        "L1",
        "success",
    )


def test_the_csv_export_of_every_matching_record_goes_beyond_one_page(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    LaunchRecord.objects.bulk_create(LaunchRecord(outcome="replay") for _ in range(250))
    record()

    _, rows = export(
        admin_client, {"_selected_action": [1], "select_across": "1"}, "?outcome__exact=replay"
    )

    assert len(rows) == 250
    assert {row["outcome"] for row in rows} == {"replay"}


def test_the_csv_export_has_no_secret_columns_and_disarms_spreadsheet_formulas(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    hostile = record(
        user_name='=HYPERLINK("https://evil.test")',
        failure_detail="@SUM(A1)",
        outcome="code_rejected",
    )

    _, rows = export(admin_client, {"_selected_action": [hostile.pk]})

    assert set(rows[0]) == {
        "id",
        "created_at",
        "outcome",
        "verified",
        "failure_detail",
        "kheops_server",
        "kheops_root_url",
        "provider",
        "client_id",
        "album_id",
        "study_uids",
        "user_sub",
        "user_name",
        "user_email",
        "remote_addr",
        "launch_id",
        "expires_at",
        "writes",
    }
    assert rows[0]["user_name"] == '\'=HYPERLINK("https://evil.test")'
    assert rows[0]["failure_detail"] == "'@SUM(A1)"
    assert rows[0]["verified"] == "false"  # KHEOPS refused the code: nothing in it is proven


def test_the_export_needs_the_view_permission(
    db: None, record: Callable[..., LaunchRecord]
) -> None:
    staff = User.objects.create_user(
        "clerk", "clerk@example.org", "pw-for-tests-only", is_staff=True
    )
    client = Client()
    client.force_login(staff)
    chosen = record()

    response = client.post(
        "/admin/launcher/launchrecord/", {"action": "export_csv", "_selected_action": [chosen.pk]}
    )

    assert response.status_code == 403


def test_launch_records_stay_read_only_with_the_export_action(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    chosen = record()

    page = admin_client.get("/admin/launcher/launchrecord/").content.decode()

    assert 'value="export_csv"' in page
    assert 'value="delete_selected"' not in page
    assert (
        admin_client.post(
            f"/admin/launcher/launchrecord/{chosen.pk}/change/", {"outcome": "replay"}
        ).status_code
        == 403
    )


# --- Integration health --------------------------------------------------------------


@pytest.fixture
def servers(kheops_server: KheopsServer, kheops_http: respx.MockRouter) -> dict[str, KheopsServer]:
    broken = KheopsServer.objects.create(name="Broken KHEOPS", root_url=OTHER_ROOT)
    disabled = KheopsServer.objects.create(
        name="Retired KHEOPS", root_url="https://retired.test", enabled=False
    )
    kheops_http.get(DISCOVERY_URL).respond(json=discovery_document())
    kheops_http.get(OTHER_DISCOVERY).respond(503)
    return {"good": kheops_server, "broken": broken, "disabled": disabled}


def _health_row(page: str, server: KheopsServer) -> str:
    start = page.index(f'data-server="{server.pk}"')
    return page[start : page.index("</tr>", start)]


def test_the_admin_index_shows_one_health_line_per_trusted_server(
    admin_client: Client, servers: dict[str, KheopsServer], record: Callable[..., LaunchRecord]
) -> None:
    good, broken = servers["good"], servers["broken"]
    record(age=timedelta(hours=3))
    record(age=timedelta(hours=1), outcome="code_rejected")
    record(age=timedelta(hours=2), outcome="kheops_timeout")
    record(age=timedelta(hours=2), outcome="pending")  # not (yet) a failure
    record(age=timedelta(minutes=5), outcome="replay")  # the same link twice: counted apart
    record(age=timedelta(minutes=4), outcome="reopened")  # sent to its own viewer: no failure
    record(age=timedelta(days=2), outcome="kheops_timeout")  # outside the window
    record(age=timedelta(days=2), outcome="replay")
    record(kheops_server=broken, age=timedelta(days=9))

    page = admin_client.get("/admin/").content.decode()

    assert page.count('class="kheops-health-row"') == 3
    assert "Refused as replays<br>last 24 h" in page
    good_row, broken_row = _health_row(page, good), _health_row(page, broken)
    assert "hours ago" in good_row and '<td class="count failures">2</td>' in good_row
    assert '<td class="count replays">1</td>' in good_row
    assert "answers" in good_row
    assert "days ago" in broken_row and '<td class="count failures">0</td>' in broken_row
    assert '<td class="count replays">0</td>' in broken_row
    assert 'alt="failing"' in broken_row and "503" in broken_row
    retired = _health_row(page, servers["disabled"])
    assert "never" in retired and "not checked" in retired


def test_the_counts_come_from_one_query(
    servers: dict[str, KheopsServer],
    record: Callable[..., LaunchRecord],
    django_assert_num_queries: Any,
) -> None:
    from launcher import dashboard

    record(outcome="replay")
    record(outcome="kheops_unavailable")

    with django_assert_num_queries(1):
        counted = {
            s.name: (s.failures_in_window, s.replays_in_window)
            for s in dashboard.with_launch_counts(KheopsServer.objects.all())
        }

    assert counted == {"KHEOPS test": (1, 1), "Broken KHEOPS": (0, 0), "Retired KHEOPS": (0, 0)}


def test_the_admin_pages_load_our_stylesheet(admin_client: Client) -> None:
    stylesheet = r'<link rel="stylesheet" href="/static/launcher/admin(\.[0-9a-f]{12})?\.css">'
    pages = {
        path: admin_client.get(path)
        for path in (
            "/admin/",
            "/admin/launcher/launchrecord/",
            "/admin/launcher/provider/add/",
            "/admin/password_change/",
        )
    }
    pages["/admin/login/"] = Client().get("/admin/login/")

    for path, page in pages.items():
        assert page.status_code == 200, path
        assert re.search(stylesheet, page.content.decode()), path


def test_the_discovery_verdict_is_reused_for_a_minute(
    admin_client: Client,
    servers: dict[str, KheopsServer],
    kheops_http: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    admin_client.get("/admin/")
    calls = len(kheops_http.calls)
    # The cache's clock, moved on: 59 s, then 61 s after the verdicts were kept.
    kept = time.time()
    clock = SimpleNamespace(time=lambda: kept)
    monkeypatch.setattr(locmem, "time", clock)

    clock.time = lambda: kept + 59
    admin_client.get("/admin/")
    within_the_minute = len(kheops_http.calls)
    clock.time = lambda: kept + 61
    admin_client.get("/admin/")

    assert calls == 2  # the two enabled servers
    assert within_the_minute == calls
    assert len(kheops_http.calls) == 2 * calls


def test_a_server_that_does_not_answer_is_shown_failing_not_raised(
    admin_client: Client, kheops_server: KheopsServer, kheops_http: respx.MockRouter
) -> None:
    kheops_http.get(DISCOVERY_URL).mock(side_effect=httpx.ConnectTimeout("slow"))

    response = admin_client.get("/admin/")

    assert response.status_code == 200
    assert 'alt="failing"> kheops.test did not answer in time' in _health_row(
        response.content.decode(), kheops_server
    )


def test_the_dashboard_check_uses_a_short_timeout(
    admin_client: Client, kheops_server: KheopsServer, kheops_http: respx.MockRouter, settings: Any
) -> None:
    settings.KHEOPS_HTTP_TIMEOUT = 30
    kheops_http.get(DISCOVERY_URL).respond(json=discovery_document())

    admin_client.get("/admin/")

    assert kheops_http.calls[0].request.extensions["timeout"]["read"] == 2.0


def test_the_health_panel_needs_the_server_view_permission(
    db: None, servers: dict[str, KheopsServer], kheops_http: respx.MockRouter
) -> None:
    staff = User.objects.create_user(
        "clerk", "clerk@example.org", "pw-for-tests-only", is_staff=True
    )
    staff.user_permissions.add(Permission.objects.get(codename="view_launchrecord"))
    client = Client()
    client.force_login(staff)

    page = client.get("/admin/").content.decode()

    assert "kheops-health" not in page
    assert len(kheops_http.calls) == 0


def test_the_server_list_shows_the_last_success_recent_failures_and_replays_apart(
    admin_client: Client, servers: dict[str, KheopsServer], record: Callable[..., LaunchRecord]
) -> None:
    record(age=timedelta(minutes=5), outcome="replay")
    record(age=timedelta(minutes=6), outcome="replay")
    record(age=timedelta(minutes=7), outcome="code_rejected")

    page = admin_client.get("/admin/launcher/kheopsserver/").content.decode()
    good = page[page.index(f'value="{servers["good"].pk}"') :].split("</tr>", 1)[0]
    broken = page[page.index(f'value="{servers["broken"].pk}"') :].split("</tr>", 1)[0]

    assert "last successful launch" in page.lower()
    assert '<td class="field-recent_failures">1</td>' in good
    assert '<td class="field-recent_replays">2</td>' in good
    assert '<td class="field-recent_failures">0</td>' in broken
    assert '<td class="field-recent_replays">0</td>' in broken


def test_a_launch_record_is_titled_with_its_outcome_in_words(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    replayed = record(outcome="replay")
    replayed.refresh_from_db()

    page = admin_client.get(f"/admin/launcher/launchrecord/{replayed.pk}/change/").content.decode()
    listing = admin_client.get("/admin/launcher/launchrecord/").content.decode()

    assert str(replayed).startswith("Refused: link already used (replay), ")
    assert f"<h2>{replayed!s}</h2>" in page
    assert '<td class="field-outcome">Refused: link already used (replay)</td>' in listing


def test_a_date_reads_the_same_on_the_index_in_the_lists_and_on_the_pages(
    admin_client: Client, servers: dict[str, KheopsServer], record: Callable[..., LaunchRecord]
) -> None:
    when = datetime(2026, 11, 29, 15, 51, 7, tzinfo=UTC)
    chosen = record()
    LaunchRecord.objects.filter(pk=chosen.pk).update(
        created_at=when, expires_at=when + timedelta(hours=1)
    )
    chosen.refresh_from_db()

    index = admin_client.get("/admin/").content.decode()
    launch_list = admin_client.get("/admin/launcher/launchrecord/").content.decode()
    launch_page = admin_client.get(
        f"/admin/launcher/launchrecord/{chosen.pk}/change/"
    ).content.decode()
    server_list = admin_client.get("/admin/launcher/kheopsserver/").content.decode()

    for page in (index, launch_list, launch_page, server_list):
        assert "2026-11-29 15:51 UTC" in page
        assert "Nov. 29" not in page and "p.m." not in page
    assert "2026-11-29 16:51 UTC" in launch_page  # access until
    assert str(chosen) == "Viewer opened, 2026-11-29 15:51 UTC"


# --- Writes through the relay (LaunchWrite) ------------------------------------------

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
SR_UID = "2.25.118463274938745523659811873245867"


def write_of(launch: LaunchRecord, **fields: Any) -> LaunchWrite:
    values: dict[str, Any] = {
        "launch": launch,
        "study_uid": STUDY_1,
        "status": 200,
        "stored": [{"sop_instance_uid": SR_UID, "sop_class_uid": SR_CLASS}],
        "stored_count": 1,
        **fields,
    }
    return LaunchWrite.objects.create(**values)


def test_a_launch_records_page_shows_its_writes_read_only(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    launch = record(launch_id="L1")
    write_of(launch, note="Checked by hand")
    write_of(record(launch_id="L2"), note="Another launch's")

    page = admin_client.get(f"/admin/launcher/launchrecord/{launch.pk}/change/").content.decode()

    assert "Writes through the relay" in page
    assert SR_UID in page and SR_CLASS in page and "Checked by hand" in page
    assert "Another launch" not in page
    assert 'name="writes-0-note"' not in page  # nothing to edit


def test_the_writes_list_is_read_only_and_names_the_user_and_study(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    write = write_of(record(launch_id="L1", user_name="Dr Grace"), status=202, failed_count=1)

    page = admin_client.get("/admin/launcher/launchwrite/").content.decode()

    assert "Dr Grace" in page and STUDY_1 in page and "202" in page
    assert admin_client.get("/admin/launcher/launchwrite/add/").status_code == 403
    assert (
        admin_client.post(f"/admin/launcher/launchwrite/{write.pk}/change/", {"note": "x"})
    ).status_code == 403
    assert (
        admin_client.post(f"/admin/launcher/launchwrite/{write.pk}/delete/", {"post": "yes"})
    ).status_code == 403
    write.refresh_from_db()
    assert write.note == ""


def test_the_csv_export_counts_each_records_writes(
    admin_client: Client, record: Callable[..., LaunchRecord]
) -> None:
    wrote = record(launch_id="L1")
    write_of(wrote)
    write_of(wrote)
    quiet = record(launch_id="L2")

    _, rows = export(admin_client, {"_selected_action": [wrote.pk, quiet.pk]})

    assert {row["id"]: row["writes"] for row in rows} == {str(wrote.pk): "2", str(quiet.pk): "0"}
