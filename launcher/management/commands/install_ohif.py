import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from launcher import ohif_bundle


class Command(BaseCommand):
    help = (
        "Download the pinned @ohif/app release from the npm registry, verify its sha512 "
        "integrity, and install it for the configured static URL (idempotent, atomic)."
    )
    # Checks would warn that the bundle is missing, which is what this command fixes.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="Reinstall even if up to date.")
        parser.add_argument(
            "--brotli-quality",
            type=int,
            default=9,
            choices=range(0, 12),
            metavar="0-11",
            help="Brotli quality for precompression (11 is smallest but ~10x slower).",
        )

    def handle(self, *args: object, force: bool, brotli_quality: int, **options: object) -> None:
        spec = ohif_bundle.load_spec(settings.OHIF_BUNDLE_SPEC)
        with requests.Session() as session:
            session.headers["User-Agent"] = "kheops-ohif install_ohif"
            try:
                result = ohif_bundle.install(
                    spec,
                    root=settings.OHIF_ROOT,
                    asset_prefix=settings.OHIF_ASSET_URL,
                    registry_url=settings.NPM_REGISTRY_URL,
                    session=session,
                    force=force,
                    progress=options.get("verbosity", 1) > 0,
                    brotli_quality=brotli_quality,
                    log=lambda message: self.stdout.write(message),
                )
            except ohif_bundle.BundleError as exc:
                raise CommandError(str(exc)) from None
        state = "installed" if result.changed else "already installed"
        self.stdout.write(
            self.style.SUCCESS(
                f"OHIF {result.bundle.version} {state} under {result.bundle.asset_prefix}"
            )
        )
