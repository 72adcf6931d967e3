"""The audit API under /api/v1/, its OpenAPI schema, and the OAuth 2 token endpoints.

Of django-oauth-toolkit's views only the token and revocation endpoints are exposed: the
client-credentials grant needs nothing else (no authorization or consent pages).
"""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from oauth2_provider import views as oauth2_views
from rest_framework.routers import DefaultRouter

from launcher.api import views

app_name = "api"


class _Router(DefaultRouter):
    APIRootView = views.AuditAPIRootView
    include_format_suffixes = False


router = _Router()
router.register("launches", views.LaunchRecordViewSet, basename="launch")
router.register("servers", views.KheopsServerViewSet, basename="server")
router.register("providers", views.ProviderViewSet, basename="provider")

urlpatterns = [
    path("api/v1/", include(router.urls)),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("oauth/token/", oauth2_views.TokenView.as_view(), name="oauth-token"),
    path("oauth/revoke_token/", oauth2_views.RevokeTokenView.as_view(), name="oauth-revoke"),
]
