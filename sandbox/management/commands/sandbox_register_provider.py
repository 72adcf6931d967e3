"""Register a report provider in an album through the HTTP endpoint, as the album admin would.

Going through `POST /api/albums/{id}/reportproviders` (rather than the ORM) makes the stand-in
fetch and validate the provider document exactly as at a real registration. Idempotent: an
existing, non-removed registration of the same URL in the album is reused.
"""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox import providers
from sandbox.models import AlbumMembership, ReportProvider
from sandbox.tokens import mint_user_token


class Command(BaseCommand):
    help = "Register CONFIG_URL as a report provider of ALBUM_ID; print its client_id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("album_id")
        parser.add_argument("config_url")
        parser.add_argument("--name", default="OHIF viewer")
        parser.add_argument(
            "--as", dest="username", default="alice", help="album admin to act as (default alice)"
        )
        parser.add_argument(
            "--root-url",
            default=settings.SANDBOX_ROOT_URL,
            help="the running stand-in to call (default SANDBOX_ROOT_URL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        album_id, config_url = options["album_id"], options["config_url"]
        existing = ReportProvider.objects.filter(
            album__album_id=album_id, url=config_url, removed=False
        ).first()
        if existing is not None:
            self.stdout.write(existing.client_id)
            return
        membership = (
            AlbumMembership.objects.filter(
                album__album_id=album_id, user__username=options["username"]
            )
            .select_related("user")
            .first()
        )
        if membership is None:
            raise CommandError(f"{options['username']} is not a member of album {album_id}")
        with providers.provider_session(
            settings.SANDBOX_PROVIDER_TIMEOUT_SECONDS + 5, settings.SANDBOX_CA_BUNDLE
        ) as session:
            try:
                response = providers.register_through_api(
                    session,
                    root_url=options["root_url"].rstrip("/"),
                    album_id=album_id,
                    config_url=config_url,
                    name=options["name"],
                    user_token=mint_user_token(membership.user),
                )
            except requests.RequestException as exc:
                raise CommandError(f"could not reach the stand-in: {type(exc).__name__}") from exc
        if response.status_code != 201:
            raise CommandError(
                f"registration refused: HTTP {response.status_code} {response.text[:300]}"
            )
        self.stdout.write(response.json()["client_id"])
