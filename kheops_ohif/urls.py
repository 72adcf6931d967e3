from django.contrib import admin
from django.urls import include, path

from launcher import health, metrics, oidc

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    # Admin sign-in through the hospital's OpenID Connect provider, and a sign-out that also
    # ends the provider's session (launcher.oidc); under /admin/, hence on ADMIN_HOSTS only.
    path("admin/oidc/sign-in/", oidc.AdminOidcSignIn.as_view(), name="oidc_authentication_init"),
    path(
        "admin/oidc/callback/",
        oidc.AdminOidcCallback.as_view(),
        name="oidc_authentication_callback",
    ),
    path("admin/oidc/problem/", oidc.sign_in_problem, name="oidc_sign_in_problem"),
    path("admin/logout/", oidc.AdminSignOut.as_view(), name="admin_sign_out"),
    path("admin/", admin.site.urls),
    path("", include("launcher.api.urls")),
    path("", include("launcher.urls")),
]
