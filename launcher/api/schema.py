from __future__ import annotations

from typing import Any

API_PREFIX = "/api/v1/"


def api_endpoints_only(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """drf-spectacular preprocessing hook: the schema describes the audit API only.

    The KHEOPS documents (configuration, JWKS) are DRF views too, but they follow KHEOPS's
    protocol, not an OpenAPI contract of ours.
    """
    return [endpoint for endpoint in endpoints if endpoint[0].startswith(API_PREFIX)]
