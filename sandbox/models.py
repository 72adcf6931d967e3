"""What the stand-in remembers: users, albums, their studies, registered report providers,
and its own adjustable clock and injected faults (in the DB so that every process agrees)."""

from __future__ import annotations

import secrets
import string
import uuid

from django.db import models

ALPHANUMERIC = string.ascii_letters + string.digits
ALBUM_ID_LENGTH = 10  # AUTH/album/AlbumId.java
CLIENT_ID_LENGTH = 22  # AUTH/report_provider/ClientId.java, "[A-Za-z0-9]{22}"


def random_alphanumeric(length: int) -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def new_album_id() -> str:
    return random_alphanumeric(ALBUM_ID_LENGTH)


def new_client_id() -> str:
    return random_alphanumeric(CLIENT_ID_LENGTH)


def new_subject() -> str:
    return str(uuid.uuid4())


class User(models.Model):
    """A KHEOPS user; `sub` is the subject its (stand-in) Keycloak tokens carry."""

    username = models.CharField(max_length=64, unique=True)
    display_name = models.CharField(max_length=200)
    email = models.EmailField()
    sub = models.CharField(max_length=64, unique=True, default=new_subject)

    def __str__(self) -> str:
        return self.username


class Album(models.Model):
    album_id = models.CharField(max_length=ALBUM_ID_LENGTH, unique=True, default=new_album_id)
    name = models.CharField(max_length=200)
    # KHEOPS album setting: whether members may add series (decides the implicit-flow scope).
    add_series = models.BooleanField(default=True)
    members = models.ManyToManyField(User, through="AlbumMembership", related_name="albums")

    def __str__(self) -> str:
        return f"{self.name} ({self.album_id})"


class AlbumMembership(models.Model):
    album = models.ForeignKey(Album, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    is_admin = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["album", "user"], name="unique_album_member")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.album}{' (admin)' if self.is_admin else ''}"


class AlbumStudy(models.Model):
    """A study shared in an album, with the few attributes the album page shows."""

    album = models.ForeignKey(Album, on_delete=models.CASCADE, related_name="studies")
    study_uid = models.CharField(max_length=64)
    description = models.CharField(max_length=200, blank=True)
    # Space-separated ModalitiesInStudy, e.g. "CT" or "MR SR".
    modalities = models.CharField(max_length=200, blank=True)
    patient_name = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["album", "study_uid"], name="unique_album_study")
        ]
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.study_uid

    @property
    def modality_list(self) -> list[str]:
        return self.modalities.split()


class ReportProvider(models.Model):
    """KHEOPS's `report_providers` table: nothing of the provider's document is stored."""

    client_id = models.CharField(max_length=CLIENT_ID_LENGTH, unique=True, default=new_client_id)
    url = models.CharField(max_length=2048)
    name = models.CharField(max_length=255)
    album = models.ForeignKey(Album, on_delete=models.CASCADE, related_name="report_providers")
    removed = models.BooleanField(default=False)
    created_time = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_time", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"


class SandboxState(models.Model):
    """A single row: the clock offset and the injected faults, shared by every process."""

    clock_offset_seconds = models.FloatField(default=0.0)
    # "elapsed": time passed for everyone, so client assertions (signed with the provider's real
    # clock) are judged against real time; "skew": only the stand-in's clock is off.
    clock_mode = models.CharField(max_length=16, default="elapsed")
    faults = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"clock {self.clock_offset_seconds:+g} s ({self.clock_mode}), faults {self.faults}"

    @classmethod
    def load(cls) -> SandboxState:
        state, _ = cls.objects.get_or_create(pk=1)
        return state
