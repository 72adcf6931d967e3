from django.urls import path, re_path

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
    # Any path below dicomweb/, line breaks included: the relay refuses what is not DICOMweb
    # with a reason (400), rather than the viewer page's 404.
    re_path(
        r"^launches/(?P<launch_id>[^/]+)/dicomweb/(?P<resource>[\s\S]+)\Z",
        views.dicomweb_relay,
        name="viewer-dicomweb",
    ),
    path("launches/<str:launch_id>/<path:route>", views.viewer_page, name="viewer"),
]
