"""WSGI entry point, for servers that speak only WSGI: `gunicorn kheops_ohif.wsgi`.

Prefer the ASGI entry point (kheops_ohif.asgi). Under WSGI every request holds a worker
thread until it ends, the token request included, which waits on KHEOPS while KHEOPS fetches
our configuration document and JWKS from the same server: a burst of launches as large as
the thread pool then waits on itself until KHEOPS gives up. Each request also gets an event
loop and KHEOPS connections of its own. See the README's "Production".
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kheops_ohif.settings")

application = get_wsgi_application()
