from django.urls import path

from launcher import branding, views

urlpatterns = [
    path("", views.home, name="home"),
    path(
        ".well-known/kheops-report-configuration",
        views.provider_configuration,
        name="default-provider-configuration",
    ),
    path("jwks.json", views.jwks, name="jwks"),
    path(
        "providers/<slug:slug>/configuration",
        views.provider_configuration,
        name="provider-configuration",
    ),
    path("providers/<slug:slug>/launch", views.launch, name="launch"),
    path("providers/<slug:slug>/logo/<str:digest>", branding.logo, name="provider-logo"),
    path("favicon.ico", branding.favicon, name="favicon"),
    path("launches/<str:launch_id>/", views.viewer_page, name="viewer-root"),
    path("launches/<str:launch_id>/token", views.viewer_token, name="viewer-token"),
    path("launches/<str:launch_id>/<path:route>", views.viewer_page, name="viewer"),
]
