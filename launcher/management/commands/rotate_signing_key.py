from datetime import timedelta

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from launcher import keys


class Command(BaseCommand):
    help = (
        "Create a new active signing key. The previous public key stays in the JWKS for a "
        "grace period so that token exchanges in flight still verify. Also destroys the "
        "private keys of retired keys whose grace period is over (as purge_keys does)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace-seconds",
            type=int,
            default=None,
            help="How long the previous key stays published (default SIGNING_KEY_GRACE_SECONDS).",
        )

    def handle(self, *args: object, grace_seconds: int | None, **options: object) -> None:
        grace = (
            timedelta(seconds=grace_seconds) if grace_seconds is not None else keys.grace_period()
        )
        if grace.total_seconds() < keys.MINIMUM_GRACE_SECONDS:
            raise CommandError(
                f"The grace period must be at least {keys.MINIMUM_GRACE_SECONDS} s: the new key "
                f"signs only once it has been published {keys.PUBLISH_BEFORE_SIGNING_SECONDS} s, "
                "and until then the previous one does."
            )
        new, previous = keys.rotate(grace=grace)
        self.stdout.write(
            f"New signing key kid={new.kid}: published now, signing in "
            f"{keys.PUBLISH_BEFORE_SIGNING_SECONDS} s"
        )
        if previous is not None:
            self.stdout.write(
                f"Previous key kid={previous.kid} stays published until {previous.retired_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        call_command("purge_keys", stdout=self.stdout)
