"""`manage.py sandbox_orthanc`: run the sandbox's own Orthanc in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.orthanc import (
    DEFAULT_STORAGE_DIR,
    OrthancError,
    OrthancProcess,
    orthanc_is_up,
)
from sandbox.samples import load_into_orthanc


class Command(BaseCommand):
    help = "Run the sandbox's Orthanc (own config, ports, storage) until interrupted."

    def add_arguments(self, parser: CommandParser) -> None:
        default_port = urlsplit(
            getattr(settings, "SANDBOX_ORTHANC_URL", "http://127.0.0.1:8142")
        ).port
        parser.add_argument("--port", type=int, default=default_port or 8142)
        parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE_DIR)
        parser.add_argument(
            "--dicom-port",
            type=int,
            default=None,
            help="enable Orthanc's DICOM server on this port (off by default)",
        )
        parser.add_argument(
            "--load-samples",
            action="store_true",
            help="upload the bundled sample studies once Orthanc answers",
        )

    def handle(
        self,
        *args: Any,
        port: int,
        storage: Path,
        dicom_port: int | None,
        load_samples: bool,
        **options: Any,
    ) -> None:
        orthanc = OrthancProcess(http_port=port, storage_dir=storage, dicom_port=dicom_port)
        if orthanc_is_up(orthanc.url):
            # Someone (another terminal, a test session) already runs it: reuse, never fight.
            self.stdout.write(f"Orthanc already answers at {orthanc.url}; reusing it.")
            if load_samples:
                load_into_orthanc(orthanc.url)
            return
        try:
            orthanc.start()
        except OrthancError as exc:
            raise CommandError(str(exc)) from exc

        def stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            self.stdout.write(
                f"Orthanc {orthanc.url} (pid {orthanc.pid}), storage {storage}, "
                f"log {orthanc.log_path}. Ctrl-C to stop."
            )
            if load_samples:
                studies = load_into_orthanc(orthanc.url)
                self.stdout.write(f"Loaded {len(studies)} sample studies.")
            orthanc.wait()
            raise CommandError(f"Orthanc exited on its own; see {orthanc.log_path}")
        except KeyboardInterrupt:
            self.stdout.write("Stopping Orthanc.")
        finally:
            orthanc.stop()
