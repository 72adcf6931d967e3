from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LauncherConfig(AppConfig):
    name = "launcher"
    verbose_name = _("KHEOPS launcher")

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from launcher import (
            checks,  # noqa: F401 - registers the system checks
            services,
            serving,
        )
        from launcher.models import KheopsServer, Provider, SigningKey

        for model in (KheopsServer, Provider):
            for signal in (post_save, post_delete):
                signal.connect(
                    services.forget_lookups,
                    sender=model,
                    dispatch_uid=f"forget-{model.__name__}-{signal}",
                )
        # What KHEOPS fetches from us: prepared again at once in this process.
        for model in (Provider, SigningKey):
            for signal in (post_save, post_delete):
                signal.connect(
                    serving.documents_changed,
                    sender=model,
                    dispatch_uid=f"documents-{model.__name__}-{signal}",
                )
