"""The launch's writes: each one statement, all or nothing, safe for concurrent writers.

A launch writes three rows (the used code, the viewer grant, the audit record); the viewer's
token request updates the grant and the audit record, only if the grant is still pending
(the replay guarantee: of two requests racing, exactly one stores its outcome). Through the
ORM that was most of a launch's own time (profiled with bench/launch.py on PostgreSQL):
about a millisecond of query compilation per statement on the benchmark machine, plus BEGIN,
one round trip per row and COMMIT.

Here the statements are plain SQL built from the models' metadata (table and column names
quoted by the backend; every value a bound parameter, prepared by its own field exactly as
the ORM prepares it). On PostgreSQL several rows go out as one statement with data-modifying
CTEs, in autocommit: one round trip, one commit, all or nothing. Other databases (SQLite:
in-process, no round trips) run the same statements in an ordinary transaction.

Only plain equality filters and plain values: anything fancier (and every read) belongs to
the ORM. The single-statement SQL runs on PostgreSQL only: run the tests there too, with
`make test DATABASE_URL=postgres://postgres@127.0.0.1:5432/test` (as CI does).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import cache
from typing import Any

from django.db import connection, models, transaction


def _single_statement() -> bool:
    return connection.vendor == "postgresql"


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _execute(statement: str, params: list[Any], *, fetch: bool = False) -> Any:
    # Inside an outer transaction (tests, ATOMIC_REQUESTS) a savepoint keeps a failed
    # statement from poisoning it; in autocommit the statement is its own transaction.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchone() if fetch else cursor.rowcount


@cache
def _insert_sql(model: type[models.Model], vendor: str) -> tuple[str, tuple[models.Field, ...]]:
    # The statement depends only on the model (and how the backend quotes): built once.
    meta = model._meta
    fields = tuple(
        f for f in meta.local_concrete_fields if f is not meta.auto_field and not f.generated
    )
    columns = ", ".join(_quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    statement = f"INSERT INTO {_quote(meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
    return statement, fields


def _insert(row: models.Model) -> tuple[str, list[Any]]:
    statement, fields = _insert_sql(type(row), connection.vendor)
    # pre_save fills auto_now_add dates on the instance, as Model.save does.
    return statement, [f.get_db_prep_save(f.pre_save(row, True), connection) for f in fields]


def insert_together(*rows: models.Model) -> None:
    """Insert new model instances atomically (auto primary keys are not read back).

    Raises IntegrityError, with nothing inserted, when any row breaks a constraint.
    """
    if not rows:
        raise ValueError("insert_together needs at least one row")
    statements = [_insert(row) for row in rows]
    if not _single_statement():
        with transaction.atomic(), connection.cursor() as cursor:
            for statement, params in statements:
                cursor.execute(statement, params)
        return
    *first, (last, last_params) = statements
    ctes = ", ".join(f"w{n} AS ({statement})" for n, (statement, _) in enumerate(first))
    params = [value for _, values in first for value in values] + last_params
    _execute(f"WITH {ctes} {last}" if ctes else last, params)


def _where(model: type[models.Model], where: dict[str, Any]) -> tuple[str, list[Any]]:
    if not where:
        raise ValueError("a condition is required")
    meta = model._meta
    fields = [meta.get_field(name) for name in where]
    clause = " AND ".join(f"{_quote(f.column)} = %s" for f in fields)
    return clause, [f.get_db_prep_value(where[f.name], connection) for f in fields]


def _update(
    model: type[models.Model], values: dict[str, Any], where: dict[str, Any]
) -> tuple[str, list[Any]]:
    meta = model._meta
    fields = [meta.get_field(name) for name in values]
    assignments = ", ".join(f"{_quote(f.column)} = %s" for f in fields)
    clause, where_params = _where(model, where)
    statement = f"UPDATE {_quote(meta.db_table)} SET {assignments} WHERE {clause}"  # noqa: S608
    return statement, [
        f.get_db_prep_save(values[f.name], connection) for f in fields
    ] + where_params


def update_both_if(
    first: type[models.Model],
    first_values: dict[str, Any],
    first_where: dict[str, Any],
    second: type[models.Model],
    second_values: dict[str, Any],
    second_where: dict[str, Any],
) -> bool:
    """Update the `first` rows and, only if there were some, the `second` ones; atomically.

    True when `first` matched. Putting the state a row must still be in into `first_where`
    makes concurrent writers safe: only one of them finds it.
    """
    first_sql, first_params = _update(first, first_values, first_where)
    second_sql, second_params = _update(second, second_values, second_where)
    if not _single_statement():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(first_sql, first_params)
            if cursor.rowcount == 0:
                return False
            cursor.execute(second_sql, second_params)
            return True
    # PostgreSQL runs every data-modifying CTE once, whether or not the main query reads it.
    statement = (
        f"WITH first_update AS ({first_sql} RETURNING 1), "  # noqa: S608
        f"second_update AS ({second_sql} AND EXISTS (SELECT 1 FROM first_update)) "
        "SELECT count(*) FROM first_update"
    )
    [updated] = _execute(statement, first_params + second_params, fetch=True)
    return updated > 0
