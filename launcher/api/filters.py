from __future__ import annotations

import django_filters
from django.core.validators import RegexValidator
from django.db.models import QuerySet

from launcher import audit
from launcher.models import KheopsServer, LaunchOutcome, LaunchRecord, Provider
from launcher.services import UID_PATTERN


class LaunchRecordFilter(django_filters.FilterSet):
    created_after = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", label="Created at or after (ISO 8601)"
    )
    created_before = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", label="Created before (ISO 8601)"
    )
    study_uid = django_filters.CharFilter(
        method="filter_study_uid",
        label="One of the launch's Study Instance UIDs",
        max_length=64,
        validators=[RegexValidator(UID_PATTERN, "Not a DICOM UID.")],
    )
    user_sub = django_filters.CharFilter(label="KHEOPS user id (sub)")
    user_email = django_filters.CharFilter(lookup_expr="iexact", label="User e-mail")
    kheops_server = django_filters.ModelChoiceFilter(
        queryset=KheopsServer.objects.all(), label="Trusted KHEOPS server id"
    )
    provider = django_filters.ModelChoiceFilter(
        queryset=Provider.objects.all(), to_field_name="slug", label="Provider slug"
    )
    outcome = django_filters.MultipleChoiceFilter(
        choices=LaunchOutcome.choices,
        label="Outcome (repeat for several)",
        # No join, so no duplicate: SELECT DISTINCT over every column would only cost time.
        distinct=False,
    )
    verified = django_filters.BooleanFilter(label="KHEOPS accepted the launch's code")
    album_id = django_filters.CharFilter(label="KHEOPS album id")
    launch_id = django_filters.CharFilter(label="Launch id (successful launches)")

    class Meta:
        model = LaunchRecord
        fields: list[str] = []

    def filter_study_uid(
        self, queryset: QuerySet[LaunchRecord], name: str, value: str
    ) -> QuerySet[LaunchRecord]:
        return audit.records_with_study(queryset, value)
