"""HTTP headers the stand-in adds to every response."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Like KHEOPS's CORSFilter on its Authorization server: any origin may call the API, so a
# browser-side provider could; preflights are answered without authentication.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS, HEAD, PATCH",
    "Access-Control-Allow-Headers": "origin, content-type, accept, authorization",
    "Access-Control-Expose-Headers": "X-Total-Count, Content-Location, Link",
    "Access-Control-Max-Age": "1209600",
}


# The pages are plain HTML and CSS: nothing inline, nothing from elsewhere. Forms post to our
# own /api/report, whose meta refresh then navigates to the provider.
def content_security_policy() -> str:
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action 'self' {settings.SANDBOX_ROOT_URL}; base-uri 'none'; frame-ancestors 'none'"
    )


class KheopsCorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/api/"):
            return self.get_response(request)
        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            response = HttpResponse(status=200)
        else:
            response = self.get_response(request)
        for name, value in CORS_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


# The OpenID Connect provider's pages: its forms (sign-in, sign-out) end in a redirect to a
# client's redirect URI, which a browser checks against form-action; like Keycloak, no
# form-action there.
def provider_content_security_policy() -> str:
    return "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.headers.get("Content-Type", "").startswith("text/html"):
            policy = (
                provider_content_security_policy()
                if request.path.startswith(("/oidc/", "/idp/"))
                else content_security_policy()
            )
            response.headers.setdefault("Content-Security-Policy", policy)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
