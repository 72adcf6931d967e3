from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LauncherConfig(AppConfig):
    name = "launcher"
    verbose_name = _("KHEOPS launcher")

    def ready(self) -> None:
        from launcher import checks  # noqa: F401 - registers the system checks
