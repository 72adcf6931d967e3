from django.contrib import admin
from django.urls import include, path

from launcher import health, metrics

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("launcher.api.urls")),
    path("", include("launcher.urls")),
]
