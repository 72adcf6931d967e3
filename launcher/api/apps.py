"""The audit API's clients: django-oauth-toolkit under the name an admin understands.

Kept out of launcher/apps.py, where a second AppConfig would stop Django from picking
LauncherConfig by itself.
"""

from django.utils.translation import gettext_lazy as _
from oauth2_provider.apps import DOTConfig


class AuditApiClientsConfig(DOTConfig):
    verbose_name = _("Audit API clients")
