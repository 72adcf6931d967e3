"""Print a fresh user token (the stand-in's Keycloak access token) for a username."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.models import User
from sandbox.tokens import mint_user_token


class Command(BaseCommand):
    help = "Print a user token for USERNAME (valid one hour on the stand-in's clock)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}: run sandbox_seed first")
        self.stdout.write(mint_user_token(user))
