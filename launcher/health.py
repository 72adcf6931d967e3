"""Liveness and readiness probes for load balancers and orchestrators."""

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from launcher import ohif_bundle, serving


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    if bundle is None:
        checks["ohif"] = "not installed: run manage.py install_ohif"
    elif bundle.asset_prefix != settings.OHIF_ASSET_URL:
        checks["ohif"] = "installed for another prefix: run manage.py install_ohif"
    else:
        checks["ohif"] = "ok"
    if serving.DRAIN.started:
        checks["server"] = "stopping: finishing the code exchanges in flight"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    if bundle is not None:
        body["ohif_version"] = bundle.version
    return JsonResponse(body, status=200 if ready else 503)
