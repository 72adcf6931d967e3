"""Set up the stand-in's OpenID Connect provider: one client and its users, from JSON on
standard input (secrets and passwords are never on a command line). Idempotent."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from sandbox import oidc


class Command(BaseCommand):
    help = (
        "Create or update an OpenID Connect client and users of the stand-in's provider from "
        "JSON on standard input (see sandbox.oidc.set_up); prints the issuer."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        oidc.set_up(json.loads(sys.stdin.read()))
        self.stdout.write(f"issuer {settings.OAUTH2_PROVIDER['OIDC_ISS_ENDPOINT']}")
