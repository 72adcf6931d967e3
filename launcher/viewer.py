"""The per-launch OHIF page: OHIF's own index.html and a generated app-config.js."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.templatetags.static import static
from django.urls import reverse

from launcher import ohif_bundle
from launcher.services import ViewerGrant

# Values measured on OHIF 3.13 against KHEOPS (shared/ohif-notes.md): KHEOPS's own OHIF
# data-source settings, exactly one data source, and nothing that loads configuration or
# images from a URL parameter (our token would be attached to those requests).
DATA_SOURCE_CONFIGURATION: dict[str, Any] = {
    "friendlyName": "KHEOPS",
    "name": "kheops",
    "qidoSupportsIncludeField": True,
    "imageRendering": "wadors",
    "thumbnailRendering": "wadors",
    "enableStudyLazyLoad": True,
    "supportsFuzzyMatching": False,
    "supportsWildcard": True,
    "staticWado": True,
    "omitQuotationForMultipartRequest": False,
    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
    "supportsReject": False,
    "dicomUploadEnabled": False,
}


def js_literal(value: Any) -> str:
    """JSON that is also safe inside any JavaScript context (no `</script>`, no U+2028)."""
    return (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def router_basename(launch_id: str) -> str:
    return reverse("viewer-root", kwargs={"launch_id": launch_id}).rstrip("/")


def app_config_js(grant: ViewerGrant) -> str:
    config = {
        "routerBasename": router_basename(grant.launch_id),
        "showStudyList": False,
        "investigationalUseDialog": {"option": "never"},
        "customizationService": {"global": {"ohif.tours": {"$set": []}}},
        "defaultDataSourceName": "kheops",
        "modes": [],
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "kheops",
                "configuration": {
                    **DATA_SOURCE_CONFIGURATION,
                    "qidoRoot": grant.dicomweb_endpoint,
                    # STOW (saving reports) goes to wadoRoot too: POST {wadoRoot}/studies.
                    "wadoRoot": grant.dicomweb_endpoint,
                },
            }
        ],
    }
    launch = {
        "expiresIn": grant.seconds_left,
        "returnUri": grant.return_uri,
        "userName": grant.user_name,
    }
    return f"""/* kheops-ohif: generated for one launch and this browser session only. Never cached. */
window.PUBLIC_URL = {js_literal(settings.OHIF_ASSET_URL)};
window.browserImportFunction = function (name) {{ return import(name); }};
window.kheopsLaunch = {js_literal(launch)};
(function () {{
  var authorization = {js_literal("Bearer " + grant.access_token)};
  var config = {js_literal(config)};
  // OHIF 3.13 takes DICOMweb headers from its user-authentication service only; an
  // extension's preRegistration runs after services exist and before any data source.
  config.extensions = [{{
    id: "kheops-ohif-launch-auth",
    preRegistration: function (args) {{
      args.servicesManager.services.userAuthenticationService.setServiceImplementation({{
        getAuthorizationHeader: function () {{ return {{ Authorization: authorization }}; }}
      }});
    }}
  }}];
  window.config = config;
}})();
"""


@lru_cache(maxsize=4)
def _index_template(path: Path, mtime_ns: int) -> str:
    html = path.read_text(encoding="utf-8")
    banner = (
        f'<link rel="stylesheet" href="{static("launcher/banner.css")}">'
        f'<script defer src="{static("launcher/banner.js")}"></script>'
    )
    return html.replace("</head>", banner + "</head>", 1)


def index_html(grant: ViewerGrant) -> str | None:
    """OHIF's index.html for this launch, or None when no bundle is installed."""
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    if bundle is None:
        return None
    template = _index_template(bundle.index_html, bundle.index_html.stat().st_mtime_ns)
    config_url = reverse("viewer-app-config", kwargs={"launch_id": grant.launch_id})
    return template.replace(ohif_bundle.APP_CONFIG_PLACEHOLDER, config_url)
