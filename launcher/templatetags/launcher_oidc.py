"""The admin's sign-in page: the provider's button, and whether the password form is offered."""

from typing import Any
from urllib.parse import urlencode

from django import template
from django.conf import settings
from django.urls import reverse

register = template.Library()


@register.simple_tag(takes_context=True)
def admin_sign_in(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    next_url = request.GET.get("next", "") if request is not None else ""
    url = reverse("oidc_authentication_init")
    return {
        "oidc": settings.OIDC_ENABLED,
        "oidc_url": f"{url}?{urlencode({'next': next_url})}" if next_url else url,
        "provider_name": settings.OIDC_PROVIDER_NAME,
        "password": settings.ADMIN_PASSWORD_LOGIN,
    }
