"""ASGI entry point, what production runs: `uvicorn kheops_ohif.asgi:application`.

Django, behind launcher.serving, which answers the documents KHEOPS fetches during every
exchange from memory and closes our KHEOPS connections at shutdown.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kheops_ohif.settings")

django_application = get_asgi_application()

from launcher.serving import Application  # noqa: E402 - needs the apps loaded above

application = Application(django_application)
