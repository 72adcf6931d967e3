from django.core.management.base import BaseCommand

from launcher import services


class Command(BaseCommand):
    help = (
        "Forget used authorization codes older than a code's life and viewer grants past "
        "their expiry (the audit records stay). The server does this by itself every "
        "CLEAN_UP_INTERVAL_SECONDS; run this from cron when that is 0 or under WSGI."
    )

    def handle(self, *args: object, **options: object) -> None:
        done = services.clean_up()
        self.stdout.write(f"{done.used_codes} used codes and {done.grants} grants forgotten.")
