from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from launcher.models import KheopsServer, validate_root_url


class Command(BaseCommand):
    help = "Trust a KHEOPS server (by its root URL) to launch the viewer. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("root_url", help="The KHEOPS root URL, e.g. https://demo.kheops.online")
        parser.add_argument("--name", required=True, help="A name shown in the admin.")
        parser.add_argument("--disable", action="store_true", help="Record it, but disabled.")

    def handle(
        self, *args: object, root_url: str, name: str, disable: bool, **options: object
    ) -> None:
        try:
            validate_root_url(root_url)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        server, created = KheopsServer.objects.update_or_create(
            root_url=root_url, defaults={"name": name, "enabled": not disable}
        )
        verb = "Trusted" if created else "Updated"
        self.stdout.write(
            f"{verb} {server.name}: launches must carry conf_uri={server.discovery_url}"
        )
