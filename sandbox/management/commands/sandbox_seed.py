"""Seed the stand-in: users, a demo album with all sample studies but one, and a second album
holding the remaining study (so that "study outside the album" can be tried). Idempotent."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from sandbox.models import Album, AlbumMembership, AlbumStudy, SandboxState, User
from sandbox.samples import SampleStudy, sample_studies

USERS = (
    ("alice", "Alice Admin", "alice@sandbox.invalid"),
    ("bob", "Bob Member", "bob@sandbox.invalid"),
    ("carol", "Carol Outsider", "carol@sandbox.invalid"),
)
DEMO_ALBUM = "Demo album"
OTHER_ALBUM = "Other album"


class Command(BaseCommand):
    help = "Create the stand-in's users, albums and studies (idempotent); print the album ids."

    def handle(self, *args: Any, **options: Any) -> None:
        studies = sample_studies()
        if len(studies) < 2:
            raise SystemExit("need at least two sample studies")
        with transaction.atomic():
            SandboxState.load()
            users = {
                username: User.objects.get_or_create(
                    username=username, defaults={"display_name": name, "email": email}
                )[0]
                for username, name, email in USERS
            }
            demo = self._album(DEMO_ALBUM, studies[:-1])
            other = self._album(OTHER_ALBUM, studies[-1:])
            self._member(demo, users["alice"], admin=True)
            self._member(demo, users["bob"], admin=False)
            self._member(other, users["alice"], admin=True)
        root = settings.SANDBOX_ROOT_URL
        self.stdout.write(f"demo_album {demo.album_id} {root}/albums/{demo.album_id}")
        self.stdout.write(f"other_album {other.album_id} {root}/albums/{other.album_id}")

    @staticmethod
    def _album(name: str, studies: list[SampleStudy]) -> Album:
        album = Album.objects.filter(name=name).order_by("pk").first() or Album.objects.create(
            name=name
        )
        for study in studies:
            AlbumStudy.objects.update_or_create(
                album=album,
                study_uid=study.study_uid,
                defaults={
                    "description": study.description,
                    "modalities": " ".join(study.modalities),
                    "patient_name": study.patient_name,
                },
            )
        return album

    @staticmethod
    def _member(album: Album, user: User, *, admin: bool) -> None:
        AlbumMembership.objects.update_or_create(
            album=album, user=user, defaults={"is_admin": admin}
        )
