"""ASGI entry point, what production runs: `uvicorn kheops_ohif.asgi:application
--no-proxy-headers --http launcher.httpserver:HttpToolsProtocol …` (the client's address is
ours to decide: launcher.clientaddr; a request head is bounded: launcher.httpserver).

Django, behind launcher.serving, which answers the documents KHEOPS fetches during every
exchange from memory, reuses request threads, and stops gracefully.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kheops_ohif.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application() does

from launcher.serving import Application, DjangoHandler  # noqa: E402 - needs the apps loaded

application = Application(DjangoHandler())
