"""URLs of the KHEOPS stand-in. The protocol lives under /api/ as in KHEOPS (where nginx
routes it to the Authorization server); the DICOMweb relay's routes are included after ours."""

from django.urls import include, path

from sandbox import oidc
from sandbox.views import api, control, pages

urlpatterns = [
    path("", pages.index, name="index"),
    path("albums/<str:album_id>", pages.album, name="album"),
    path(
        "api/.well-known/report-provider-configuration",
        api.discovery,
        name="discovery",
    ),
    path("api/albums/<str:album_id>/reportproviders", api.album_providers),
    path("api/albums/<str:album_id>/reportproviders/<str:client_id>", api.album_provider),
    path("api/reportproviders/metadata", api.provider_metadata),
    path("api/report", api.report, name="report"),
    path("api/token", api.token, name="token"),
    path("api/token/introspect", api.introspect, name="introspect"),
    path("api/userinfo", api.userinfo, name="userinfo"),
    path("_sandbox/state", control.state_view),
    path("_sandbox/faults", control.faults_view),
    path("_sandbox/clock", control.clock_view),
    path("_sandbox/user-token", control.user_token_view),
    # The OpenID Connect provider (Keycloak's role): discovery at /oidc/.well-known/openid-
    # configuration, its sign-in page at /idp/login/.
    path("oidc/", include((oidc.urlpatterns, "oauth2_provider"))),
    path("idp/login/", oidc.SignIn.as_view(), name="idp-login"),
    path("api/", include("sandbox.dicomweb_urls")),
]

handler500 = "sandbox.views.api.server_error"
