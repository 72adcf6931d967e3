"""The per-launch OHIF page: OHIF's own index.html and a generated app-config.js."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.templatetags.static import static
from django.urls import reverse

from launcher import branding, ohif_bundle, services
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
    launch_id = js_literal(grant.launch_id)
    token_url = js_literal(reverse("viewer-token", kwargs={"launch_id": grant.launch_id}))
    brand = js_literal(branding.header_brand(services.provider_of(grant)))
    return f"""/* kheops-ohif: generated for one launch and this browser session only. Never cached. */
window.PUBLIC_URL = {js_literal(settings.OHIF_ASSET_URL)};
window.browserImportFunction = function (name) {{ return import(name); }};
(function () {{
  "use strict";
  var config = {js_literal(config)};
  var returnUri = {js_literal(grant.return_uri)};
  // The KHEOPS code is exchanged while OHIF loads: ask for the token at once, and make
  // OHIF wait for it only where it would first need it. The token never enters a URL.
  var token = fetch({token_url}, {{
    credentials: "same-origin",
    cache: "no-store",
    headers: {{ Accept: "application/json" }}
  }}).then(function (response) {{
    return response.json().then(function (body) {{
      if (!response.ok) {{
        var refused = new Error([body.error, body.advice].filter(Boolean).join(" ") ||
          "The viewer could not open this study.");
        refused.answered = true;
        throw refused;
      }}
      return body;
    }});
  }});
  var authorization = null;
  window.kheopsLaunch = {{
    returnUri: returnUri,
    ready: token.then(function (body) {{ return {{ expiresIn: body.expiresIn, userName: body.userName }}; }})
  }};
  window.kheopsLaunch.ready.catch(function () {{}});

  function stop(error) {{
    // Our server answered with a reason: the viewer page now shows it, with the way back.
    var key = "kheops-ohif-refused:" + {launch_id};
    var reloadOnce = false;
    try {{  // storage may be off (private modes): then no reload, the message below
      reloadOnce = !!(error && error.answered) && !sessionStorage.getItem(key);
      if (reloadOnce) {{ sessionStorage.setItem(key, "1"); }}
    }} catch (ignored) {{
      reloadOnce = false;
    }}
    if (reloadOnce) {{
      location.replace(location.href);
    }} else {{
      var message = document.createElement("p");
      message.style.cssText = "color:#fff;font:16px sans-serif;padding:2em";
      message.textContent = (error && error.message) || "The viewer could not open this study.";
      if (returnUri) {{
        var back = document.createElement("a");
        back.href = returnUri;
        back.rel = "noreferrer";
        back.textContent = " Back to KHEOPS";
        back.style.color = "#7cf";
        message.appendChild(back);
      }}
      document.body.replaceChildren(message);
    }}
    return new Promise(function () {{}});  // OHIF goes no further
  }}

  // OHIF 3.13 takes DICOMweb headers from its user-authentication service only; an
  // extension's preRegistration runs after services exist and before any data source,
  // and OHIF awaits it.
  config.extensions = [{{
    id: "kheops-ohif-launch-auth",
    preRegistration: function (args) {{
      args.servicesManager.services.userAuthenticationService.setServiceImplementation({{
        getAuthorizationHeader: function () {{ return authorization ? {{ Authorization: authorization }} : {{}}; }}
      }});
      return token.then(function (body) {{ authorization = body.authorization; }}, stop);
    }}
  }}];
  // White label: the provider's logo (or our neutral mark) and name in OHIF's header,
  // where OHIF 3.13 would draw its own logo. OHIF's header gives it about 240 px.
  var brand = {brand};
  config.whiteLabeling = {{
    createLogoComponentFn: function (React) {{
      return React.createElement("span", {{
        "data-cy": "kheops-ohif-brand",
        title: brand.title,
        style: {{ display: "inline-flex", alignItems: "center", gap: "8px", maxWidth: "236px",
          color: "hsl(var(--foreground, 0 0% 98%))", font: "500 14px/1.2 system-ui, sans-serif" }}
      }},
        React.createElement("img", {{ src: brand.logo, alt: "",
          style: {{ height: "28px", width: "auto", maxWidth: "96px", objectFit: "contain", flex: "none" }} }}),
        brand.title ? React.createElement("span", {{
          style: {{ overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }}
        }}, brand.title) : null);
    }}
  }};
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
