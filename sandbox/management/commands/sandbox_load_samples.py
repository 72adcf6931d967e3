"""`manage.py sandbox_load_samples`: upload the bundled sample studies into the sandbox Orthanc."""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.samples import load_into_orthanc, sample_studies


class Command(BaseCommand):
    help = "Upload pydicom's bundled sample studies into Orthanc (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--orthanc-url",
            default=getattr(settings, "SANDBOX_ORTHANC_URL", "http://127.0.0.1:8142"),
        )

    def handle(self, *args: Any, orthanc_url: str, **options: Any) -> None:
        try:
            load_into_orthanc(orthanc_url)
        except requests.RequestException as exc:
            raise CommandError(f"could not load the samples into {orthanc_url}: {exc}") from exc
        for study in sample_studies():
            self.stdout.write(
                f"{study.study_uid}  {'/'.join(study.modalities):<3}  {study.description}"
                f"  ({len(study.files)} file{'s' if len(study.files) > 1 else ''})"
            )
