"""The integration-health panel of the admin index page (templates/admin/index.html)."""

from __future__ import annotations

from typing import Any

from django import template

from launcher import dashboard

register = template.Library()


@register.simple_tag(takes_context=True)
def kheops_server_health(context: dict[str, Any]) -> list[dashboard.ServerHealth]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("launcher.view_kheopsserver"):
        return []
    return dashboard.server_health()
