from django.core.management.base import BaseCommand

from launcher import keys


class Command(BaseCommand):
    help = (
        "Destroy the private keys of retired signing keys whose grace period is over "
        "(they sign nothing and are no longer published). Run it daily; rotate_signing_key "
        "runs it too. Idempotent."
    )

    def handle(self, *args: object, **options: object) -> None:
        purged = keys.purge_retired()
        for key in purged:
            self.stdout.write(
                f"Destroyed the private key of kid={key.kid}, retired since "
                f"{key.retired_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        self.stdout.write(f"{len(purged)} retired private key(s) destroyed.")
