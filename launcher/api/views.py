from __future__ import annotations

from django.conf import settings
from django_filters.rest_framework import DjangoFilterBackend
from oauth2_provider.contrib.rest_framework import OAuth2Authentication
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.routers import APIRootView
from rest_framework.viewsets import ReadOnlyModelViewSet

from launcher.api.filters import LaunchRecordFilter
from launcher.api.permissions import TokenHasScopeOrStaffSession
from launcher.api.serializers import (
    KheopsServerSerializer,
    LaunchRecordSerializer,
    ProviderSerializer,
)
from launcher.models import KheopsServer, LaunchRecord, Provider


class AuditAPIMixin:
    # Bearer first: an anonymous caller gets 401 with `WWW-Authenticate: Bearer`. The session
    # serves admins browsing the API; it never writes, so its CSRF check never comes into play.
    authentication_classes = [OAuth2Authentication, SessionAuthentication]
    permission_classes = [TokenHasScopeOrStaffSession]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    required_scopes = [settings.AUDIT_READ_SCOPE]


class AuditAPIRootView(AuditAPIMixin, APIRootView):
    pass


class LaunchRecordPagination(CursorPagination):
    # A cursor, not page numbers: launches keep arriving while a client pages through, and
    # a cursor neither repeats nor skips a record. `id` breaks ties between equal timestamps.
    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class LaunchRecordViewSet(AuditAPIMixin, ReadOnlyModelViewSet):
    """Launch attempts, newest first: who opened which studies, when, from where, and how it
    ended. Failed attempts are included (`outcome` other than `success`); `pending` is a launch
    whose viewer has not exchanged its code (yet, or ever: the tab was closed at once)."""

    queryset = LaunchRecord.objects.select_related("kheops_server", "provider").prefetch_related(
        "writes"
    )
    serializer_class = LaunchRecordSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = LaunchRecordFilter
    pagination_class = LaunchRecordPagination


class KheopsServerViewSet(AuditAPIMixin, ReadOnlyModelViewSet):
    """The KHEOPS servers this viewer trusts."""

    queryset = KheopsServer.objects.order_by("name", "id")
    serializer_class = KheopsServerSerializer
    pagination_class = None


class ProviderViewSet(AuditAPIMixin, ReadOnlyModelViewSet):
    """The report providers KHEOPS album admins can register (one per OHIF mode)."""

    queryset = Provider.objects.order_by("slug")
    serializer_class = ProviderSerializer
    lookup_field = "slug"
    pagination_class = None
