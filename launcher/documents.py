"""What KHEOPS fetches from us: the providers' configuration documents and our JWKS.

KHEOPS stores nothing of them and fetches them again and again: a configuration document on
nearly every step (twice per launch, twice per token exchange), the JWKS on every exchange,
while the exchange they serve waits for KHEOPS's answer. Each server process therefore keeps
them ready as bytes and answers them from memory (launcher.serving); the views below answer
the same bytes when the app is not run by that server (the test client, WSGI).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.urls import reverse

from launcher import keys
from launcher.models import Provider

# Proxies may keep them a minute (a key is published longer than that before it signs: keys.py).
CACHE_CONTROL = "public, max-age=60"
CONTENT_TYPE = "application/json"
DEFAULT_CONFIGURATION_PATH = "/.well-known/kheops-report-configuration"
JWKS_PATH = "/jwks.json"


def configuration_document(provider: Provider) -> dict[str, Any]:
    document = {
        "client_name": provider.client_name,
        "redirect_uri": provider.redirect_uri,
        "response_type": "code",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "RS256",
        "jwks_uri": settings.PUBLIC_BASE_URL + JWKS_PATH,
        "client_uri": settings.PUBLIC_BASE_URL + "/",
    }
    if provider.supported_modalities:
        document["supported_modalities"] = list(provider.supported_modalities)
    return document


def jwks() -> dict[str, Any]:
    return {"keys": keys.published_keys()}


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def all_bodies() -> dict[str, bytes]:
    """Every document we publish, by path below the deployment's sub-path (reads the database)."""
    bodies = {JWKS_PATH: encode(jwks())}
    for provider in Provider.objects.filter(enabled=True).order_by("slug"):
        body = encode(configuration_document(provider))
        path = reverse("provider-configuration", kwargs={"slug": provider.slug})
        bodies[path.removeprefix(settings.SCRIPT_NAME)] = body
        if provider.is_default:
            bodies[DEFAULT_CONFIGURATION_PATH] = body
    return bodies
