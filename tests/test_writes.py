"""launcher/writes.py: the launch's few statements, without the ORM, as the ORM would write them.

Run on SQLite (a transaction) and on PostgreSQL (one statement with data-modifying CTEs):
`DATABASE_URL=postgres://… pytest tests/test_writes.py`. Each behaviour is checked inside the
test's transaction (as under ATOMIC_REQUESTS) and, where it matters, in autocommit (as the
app runs), since the two take different paths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Model
from django.utils import timezone

from launcher import writes
from launcher.models import (
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
    Provider,
    UsedCode,
)

# Values a hand-written statement could get wrong: quotes, backslashes, non-ASCII, nesting.
AWKWARD_JSON: Any = ["1.2.840.10008.1", 'it\'s "quoted" \\ é ✓', {"nested": [1, 2.5, None, True]}]


@pytest.fixture(
    params=[
        pytest.param("in a transaction", marks=pytest.mark.django_db),
        pytest.param("in autocommit", marks=pytest.mark.django_db(transaction=True)),
    ]
)
def database(request: pytest.FixtureRequest) -> str:
    """The test's database access: inside the test's transaction, or in real autocommit."""
    return request.param


@pytest.fixture
def linked(database: str) -> tuple[Provider, KheopsServer]:
    return linked_rows()


def linked_rows() -> tuple[Provider, KheopsServer]:
    # Our own rows: an autocommit test empties the tables, data migrations included.
    provider, _ = Provider.objects.get_or_create(
        slug="writes-test", defaults={"client_name": "Writes test", "mode": "segmentation"}
    )
    server, _ = KheopsServer.objects.get_or_create(
        root_url="https://writes.kheops.test", defaults={"name": "Writes test"}
    )
    return provider, server


def a_code(n: int = 0) -> UsedCode:
    return UsedCode(code_hash=f"{n:064x}", used_at=timezone.now())


def a_grant(
    linked: tuple[Provider, KheopsServer], launch_id: str = "launch-1", **values: Any
) -> LaunchGrant:
    provider, server = linked
    fields: dict[str, Any] = {
        "launch_id": launch_id,
        "browser_key_hash": "b" * 64,
        "state": GrantState.PENDING,
        "sealed_code": "sealed-code",
        "expires_at": timezone.now() + timedelta(seconds=600),
        "client_id": "Q9ZTMv3fW7ta0Npg1caGMF",
        "provider": provider,
        "kheops_server": server,
        "dicomweb_endpoint": "https://writes.kheops.test/api",
        "study_uids": AWKWARD_JSON,
        "mode": "segmentation",
        "return_uri": "https://writes.kheops.test/albums/AbC",
    }
    return LaunchGrant(**{**fields, **values})


def a_record(
    linked: tuple[Provider, KheopsServer], launch_id: str = "launch-1", **values: Any
) -> LaunchRecord:
    provider, server = linked
    fields: dict[str, Any] = {
        "launch_id": launch_id,
        "provider": provider,
        "kheops_server": server,
        "client_id": "Q9ZTMv3fW7ta0Npg1caGMF",
        "album_id": "AbC",
        "study_uids": AWKWARD_JSON,
        "outcome": LaunchOutcome.PENDING,
        "remote_addr": "2001:db8::1",
    }
    return LaunchRecord(**{**fields, **values})


def field_values(row: Model) -> dict[str, Any]:
    return {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields}


def counts() -> tuple[int, int, int]:
    return UsedCode.objects.count(), LaunchGrant.objects.count(), LaunchRecord.objects.count()


# --- insert_together ---------------------------------------------------------------------


def test_insert_together_inserts_every_row_as_the_orm_would(
    linked: tuple[Provider, KheopsServer],
) -> None:
    provider, server = linked
    code, grant, record = a_code(), a_grant(linked), a_record(linked)

    writes.insert_together(code, grant, record)

    assert counts() == (1, 1, 1)
    assert UsedCode.objects.get().used_at == code.used_at
    stored_grant = LaunchGrant.objects.get()
    assert field_values(stored_grant) == field_values(grant)
    assert stored_grant.provider == provider and stored_grant.kheops_server == server
    assert stored_grant.study_uids == AWKWARD_JSON
    stored = LaunchRecord.objects.get()
    assert stored.launch_id == "launch-1"
    assert stored.study_uids == AWKWARD_JSON
    assert stored.remote_addr == "2001:db8::1"
    assert stored.outcome == LaunchOutcome.PENDING
    assert (stored.provider_id, stored.kheops_server_id) == (provider.pk, server.pk)
    assert (stored.user_sub, stored.expires_at, stored.failure_detail) == ("", None, "")


def test_insert_together_fills_auto_now_add_dates(linked: tuple[Provider, KheopsServer]) -> None:
    record = a_record(linked)
    assert record.created_at is None
    before = timezone.now()

    writes.insert_together(a_code(), record)

    after = timezone.now()
    stored = LaunchRecord.objects.get()
    assert stored.created_at is not None
    assert before <= stored.created_at <= after
    # Filled on the instance too, as Model.save does.
    assert record.created_at == stored.created_at


def test_insert_together_of_one_row(linked: tuple[Provider, KheopsServer]) -> None:
    writes.insert_together(a_record(linked))

    assert counts() == (0, 0, 1)


@pytest.mark.parametrize("duplicate", ["first", "middle", "last"])
def test_insert_together_inserts_nothing_when_one_row_breaks_a_constraint(
    linked: tuple[Provider, KheopsServer], duplicate: str
) -> None:
    # One row of each kind is already there; the new batch repeats the primary key of one.
    writes.insert_together(a_code(0), a_grant(linked, "launch-0"), a_record(linked, "launch-0"))
    rows = {
        "first": [a_code(0), a_grant(linked, "launch-1"), a_record(linked, "launch-1")],
        "middle": [a_code(1), a_grant(linked, "launch-0"), a_record(linked, "launch-1")],
        "last": [a_code(1), a_record(linked, "launch-1"), a_grant(linked, "launch-0")],
    }[duplicate]

    with pytest.raises(IntegrityError):
        writes.insert_together(*rows)

    # Nothing of the batch, and the connection is still usable (savepoint or autocommit).
    assert counts() == (1, 1, 1)
    assert set(LaunchRecord.objects.values_list("launch_id", flat=True)) == {"launch-0"}
    assert set(UsedCode.objects.values_list("code_hash", flat=True)) == {f"{0:064x}"}


def test_insert_together_refuses_a_batch_that_repeats_itself(
    linked: tuple[Provider, KheopsServer],
) -> None:
    with pytest.raises(IntegrityError):
        writes.insert_together(a_code(7), a_record(linked, "launch-7"), a_code(7))

    assert counts() == (0, 0, 0)


@pytest.mark.django_db
def test_a_failed_insert_leaves_the_surrounding_transaction_usable() -> None:
    with transaction.atomic():
        UsedCode.objects.create(code_hash=f"{1:064x}", used_at=timezone.now())
        with pytest.raises(IntegrityError):
            writes.insert_together(
                LaunchRecord(outcome=LaunchOutcome.PENDING, launch_id="x"), a_code(1)
            )
        LaunchRecord.objects.create(outcome=LaunchOutcome.REPLAY)

    assert list(LaunchRecord.objects.values_list("outcome", flat=True)) == [LaunchOutcome.REPLAY]
    assert UsedCode.objects.count() == 1


# --- update_both_if ----------------------------------------------------------------------


def exchange_values(sealed: str = "sealed-token") -> tuple[dict[str, Any], dict[str, Any]]:
    expires_at = timezone.now() + timedelta(seconds=3600)
    grant = {
        "state": GrantState.READY,
        "sealed_code": "",
        "sealed_token": sealed,
        "expires_at": expires_at,
        "user_name": "Dr Élodie O'Brien",
        "study_uids": ["1.2.3", "it's"],
    }
    record = {
        "outcome": LaunchOutcome.SUCCESS,
        "expires_at": expires_at,
        "user_sub": "user-123",
        "user_name": "Dr Élodie O'Brien",
    }
    return grant, record


def test_update_both_if_updates_both_when_the_first_matches(
    linked: tuple[Provider, KheopsServer],
) -> None:
    writes.insert_together(a_grant(linked), a_record(linked), a_record(linked, "launch-other"))
    grant_values, record_values = exchange_values()

    updated = writes.update_both_if(
        LaunchGrant,
        grant_values,
        {"launch_id": "launch-1", "state": GrantState.PENDING},
        LaunchRecord,
        record_values,
        {"launch_id": "launch-1"},
    )

    assert updated is True
    grant = LaunchGrant.objects.get()
    assert {name: getattr(grant, name) for name in grant_values} == grant_values
    assert grant.provider == linked[0]  # untouched columns stay
    record = LaunchRecord.objects.get(launch_id="launch-1")
    assert {name: getattr(record, name) for name in record_values} == record_values
    assert record.study_uids == AWKWARD_JSON
    # Only the rows the second filter names.
    other = LaunchRecord.objects.get(launch_id="launch-other")
    assert (other.outcome, other.user_sub, other.expires_at) == (LaunchOutcome.PENDING, "", None)


@pytest.mark.parametrize(
    "first_where",
    [
        {"launch_id": "launch-1", "state": GrantState.READY},  # not in that state
        {"launch_id": "no-such-launch", "state": GrantState.PENDING},  # no such row
    ],
    ids=["other-state", "other-row"],
)
def test_update_both_if_changes_nothing_when_the_first_does_not_match(
    linked: tuple[Provider, KheopsServer], first_where: dict[str, Any]
) -> None:
    writes.insert_together(a_grant(linked), a_record(linked))
    grant_before = field_values(LaunchGrant.objects.get())
    record_before = field_values(LaunchRecord.objects.get())
    grant_values, record_values = exchange_values()

    updated = writes.update_both_if(
        LaunchGrant,
        grant_values,
        first_where,
        LaunchRecord,
        record_values,
        {"launch_id": "launch-1"},  # would match
    )

    assert updated is False
    assert field_values(LaunchGrant.objects.get()) == grant_before
    assert field_values(LaunchRecord.objects.get()) == record_before


def test_update_both_if_lets_only_the_first_of_two_writers_store(
    linked: tuple[Provider, KheopsServer],
) -> None:
    # Both read the grant pending, both exchanged; they store one after the other.
    writes.insert_together(a_grant(linked), a_record(linked))
    first_grant, first_record = exchange_values("first-token")
    second_grant = {**first_grant, "sealed_token": "second-token", "user_name": "second"}
    second_record = {**first_record, "user_sub": "second"}
    where = {"launch_id": "launch-1", "state": GrantState.PENDING}

    first = writes.update_both_if(
        LaunchGrant, first_grant, where, LaunchRecord, first_record, {"launch_id": "launch-1"}
    )
    second = writes.update_both_if(
        LaunchGrant, second_grant, where, LaunchRecord, second_record, {"launch_id": "launch-1"}
    )

    assert (first, second) == (True, False)
    grant = LaunchGrant.objects.get()
    assert (grant.sealed_token, grant.user_name) == ("first-token", first_grant["user_name"])
    assert LaunchRecord.objects.get().user_sub == "user-123"


def test_update_both_if_can_store_a_failure(linked: tuple[Provider, KheopsServer]) -> None:
    writes.insert_together(a_grant(linked), a_record(linked))

    updated = writes.update_both_if(
        LaunchGrant,
        {
            "state": GrantState.FAILED,
            "sealed_code": "",
            "failure_status": 504,
            "failure_message": "too slow",
        },
        {"launch_id": "launch-1", "state": GrantState.PENDING},
        LaunchRecord,
        {
            "outcome": LaunchOutcome.KHEOPS_TIMEOUT,
            "failure_detail": "kheops.test did not answer in time",
        },
        {"launch_id": "launch-1"},
    )

    assert updated is True
    grant = LaunchGrant.objects.get()
    assert (grant.state, grant.sealed_code, grant.failure_status, grant.failure_message) == (
        GrantState.FAILED,
        "",
        504,
        "too slow",
    )
    record = LaunchRecord.objects.get()
    assert (record.outcome, record.failure_detail) == (
        LaunchOutcome.KHEOPS_TIMEOUT,
        "kheops.test did not answer in time",
    )


# --- Concurrent writers (a database server) --------------------------------------------


def at_once(work: Callable[[int], Any], writers: int) -> list[Any]:
    """Run `work(n)` in `writers` threads, each with its own database connection, together."""
    barrier = threading.Barrier(writers)
    results: list[Any] = [None] * writers

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[n] = work(n)
        except Exception as exc:  # reported to the test
            results[n] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.fixture
def database_server(transactional_db: None) -> tuple[Provider, KheopsServer]:
    # In autocommit only: other connections cannot see a test's transaction.
    return linked_rows()


def test_update_both_if_is_safe_for_concurrent_writers(
    database_server: tuple[Provider, KheopsServer],
) -> None:
    for attempt in range(10):
        launch_id = f"launch-{attempt}"
        writes.insert_together(
            a_grant(database_server, launch_id), a_record(database_server, launch_id)
        )

        def store(n: int, launch_id: str = launch_id) -> bool:
            grant_values, record_values = exchange_values(f"token-{n}")
            return writes.update_both_if(
                LaunchGrant,
                {**grant_values, "user_name": f"writer-{n}"},
                {"launch_id": launch_id, "state": GrantState.PENDING},
                LaunchRecord,
                {**record_values, "user_sub": f"writer-{n}"},
                {"launch_id": launch_id},
            )

        results = at_once(store, 4)

        assert sorted(results, key=str) == [False, False, False, True], results
        winner = results.index(True)
        grant = LaunchGrant.objects.get(launch_id=launch_id)
        assert (grant.sealed_token, grant.user_name) == (f"token-{winner}", f"writer-{winner}")
        assert LaunchRecord.objects.get(launch_id=launch_id).user_sub == f"writer-{winner}"


def test_insert_together_is_all_or_nothing_for_concurrent_writers(
    database_server: tuple[Provider, KheopsServer],
) -> None:
    for attempt in range(10):
        # The same code launched several times at once: one launch, the others refused whole.
        def launch(n: int, attempt: int = attempt) -> bool:
            launch_id = f"launch-{attempt}-{n}"
            try:
                writes.insert_together(
                    a_code(attempt),
                    a_grant(database_server, launch_id),
                    a_record(database_server, launch_id),
                )
            except IntegrityError:
                return False
            return True

        results = at_once(launch, 4)

        assert sorted(results, key=str) == [False, False, False, True], results
        winner = f"launch-{attempt}-{results.index(True)}"
        assert list(
            LaunchGrant.objects.filter(launch_id__startswith=f"launch-{attempt}-").values_list(
                "launch_id", flat=True
            )
        ) == [winner]
        assert list(
            LaunchRecord.objects.filter(launch_id__startswith=f"launch-{attempt}-").values_list(
                "launch_id", flat=True
            )
        ) == [winner]
