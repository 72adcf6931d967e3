"""WSGI entry point: `gunicorn kheops_ohif.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kheops_ohif.settings")

application = get_wsgi_application()
