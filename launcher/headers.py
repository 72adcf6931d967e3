"""Per-view response headers that differ from the site-wide defaults (settings.py)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponseBase

# The site default is `same-origin` (SECURE_REFERRER_POLICY): under `no-referrer` browsers
# send `Origin: null` with a same-origin form POST (Fetch standard) and Django's CSRF check
# refuses every admin form. The launch and viewer responses keep `no-referrer`: the launch
# URL carries the authorization code, and a same-origin subresource of its error page
# would otherwise send it to our own access logs in `Referer`. SecurityMiddleware only
# sets the header where a view has not.
NO_REFERRER = "no-referrer"


def no_referrer(view: Callable[..., Any]) -> Callable[..., Any]:
    """Serve `view` (sync or async) with `Referrer-Policy: no-referrer`."""
    if iscoroutinefunction(view):

        async def async_wrapped(*args: Any, **kwargs: Any) -> HttpResponseBase:
            response = await view(*args, **kwargs)
            response["Referrer-Policy"] = NO_REFERRER
            return response

        wrapped: Callable[..., Any] = wraps(view)(async_wrapped)
        return markcoroutinefunction(wrapped)

    @wraps(view)
    def sync_wrapped(*args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(*args, **kwargs)
        response["Referrer-Policy"] = NO_REFERRER
        return response

    return sync_wrapped


def server_timing(calls: list[tuple[str, float]], total: float) -> str:
    """`Server-Timing`: each KHEOPS round trip, and what is left: our own processing (ms)."""
    upstream = sum(seconds for _, seconds in calls)
    parts = [f"{call};dur={seconds * 1000:.2f}" for call, seconds in calls]
    parts.append(f"app;dur={max(0.0, total - upstream) * 1000:.2f}")
    return ", ".join(parts)
