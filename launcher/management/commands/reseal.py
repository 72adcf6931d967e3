from django.core.management.base import BaseCommand, CommandError

from launcher import resealing, sealing

# Names of unopenable rows listed in full; beyond that, a count.
LISTED = 10


class Command(BaseCommand):
    help = (
        "Seal every stored secret (signing keys, launch codes, KHEOPS tokens) anew under the "
        "current key (SEALING_KEY, else SECRET_KEY). Run it after changing that key, the old "
        "one still in SEALING_KEY_FALLBACKS or SECRET_KEY_FALLBACKS; then drop the old one. "
        "Idempotent; safe while the server runs. Prints counts, never a secret."
    )

    def handle(self, *args: object, **options: object) -> None:
        tallies = resealing.reseal_everything()
        unopenable = 0
        for tally in tallies:
            self.stdout.write(
                f"{tally.sealed.label}: {tally.resealed} re-sealed, "
                f"{tally.already_current} already under the current key"
                + (
                    f", {tally.changed_meanwhile} changed meanwhile by the server"
                    if tally.changed_meanwhile
                    else ""
                )
                + (f", {len(tally.unopenable)} cannot be opened" if tally.unopenable else "")
            )
            unopenable += len(tally.unopenable)
            if tally.unopenable:
                self._explain(tally)
        if unopenable:
            raise CommandError(
                f"{unopenable} sealed value(s) cannot be opened with any configured key (listed "
                f"above); everything else is sealed under the current key. To open them, "
                f"{sealing.RESTORE_ADVICE}."
            )
        self.stdout.write(self.style.SUCCESS("Everything is sealed under the current key."))

    def _explain(self, tally: resealing.Tally) -> None:
        names = ", ".join(tally.unopenable[:LISTED])
        more = len(tally.unopenable) - LISTED
        if more > 0:
            names += f" and {more} more"
        self.stderr.write(f"  cannot be opened ({tally.sealed.names}): {names}")
        if tally.sealed.model is resealing.SigningKey:
            self.stderr.write(
                "  Without its key, a signing key is lost: python manage.py rotate_signing_key "
                "makes a new one (it signs 90 s later), purge_keys clears a retired one."
            )
        else:
            self.stderr.write(
                "  Those launches cannot open their viewer; they expire within the hour. "
                "The clinician opens the study again from KHEOPS."
            )
