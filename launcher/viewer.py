"""The per-launch OHIF page: OHIF's own index.html, with the launch's data and our script.

OHIF's index.html loads its configuration from a script before the bundle. Ours is
static/launcher/launch.js, the same for every launch (hashed, cached for ever); what is
particular to the launch is a JSON data block in the page (`launch_data`): no secret, the
page is for this browser only and never cached, and a data block is not a script (the CSP
keeps `script-src 'self'`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import escape, json_script
from django.utils.translation import get_language, gettext_lazy

from launcher import branding, ohif_bundle, services
from launcher.models import public_url
from launcher.services import ViewerGrant

# Values measured on OHIF 3.13 against KHEOPS (docs/ohif.md): KHEOPS's own OHIF
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


LAUNCH_DATA_ID = "kheops-ohif-launch"
# Where OHIF's index.html loaded its app-config.js (see ohif_bundle.rewrite_index_html).
_CONFIG_SCRIPT = re.compile(
    r'<script[^>]*src="' + re.escape(ohif_bundle.APP_CONFIG_PLACEHOLDER) + '"[^>]*></script>'
)
_LAUNCH_SLOT = "<!--kheops-ohif-launch-->"
# OHIF's <html lang="en">: the page's language instead (screen readers; OHIF's own language
# comes from the viewer URL's `lng`, launcher.views.viewer_url).
_HTML_LANG = re.compile(r'<html lang="[^"]*"')
_LANG_SLOT = '<html lang="__KHEOPS_OHIF_LANG__"'

# What our scripts in the viewer show (banner.js, launch.js), in the page's language; `{…}`
# are filled in by the scripts.
VIEWER_TEXT = {
    "openedAs": gettext_lazy("Opened as {who}"),
    "openedWithoutUser": gettext_lazy("Opened without a KHEOPS user name"),
    "fromAlbumOnServer": gettext_lazy("from album {album} on {server}"),
    "fromAlbum": gettext_lazy("from album {album}"),
    "fromServer": gettext_lazy("from {server}"),
    "accessEndsIn": gettext_lazy("Access ends in {time}."),
    "accessExpired": gettext_lazy("Your access has expired."),
    "openAgain": gettext_lazy("Open again from KHEOPS"),
    "cannotOpen": gettext_lazy("The viewer could not open this study."),
    "backToKheops": gettext_lazy("Back to KHEOPS"),
}


def router_basename(launch_id: str) -> str:
    return reverse("viewer-root", kwargs={"launch_id": launch_id}).rstrip("/")


def dicomweb_root(grant: ViewerGrant) -> str:
    """Where the viewer's data source sends its DICOMweb requests: KHEOPS itself (direct),
    or, in relay mode, this launch's same-origin relay (absolute, as OHIF expects)."""
    if not grant.relayed:
        return grant.dicomweb_endpoint
    return public_url("viewer-root", launch_id=grant.launch_id) + "dicomweb"


def ohif_config(grant: ViewerGrant) -> dict[str, Any]:
    """OHIF's configuration for the launch, less its functions (launch.js adds them)."""
    root = dicomweb_root(grant)
    return {
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
                    "qidoRoot": root,
                    # STOW (saving reports) goes to wadoRoot too: POST {wadoRoot}/studies.
                    "wadoRoot": root,
                },
            }
        ],
    }


def launch_data(grant: ViewerGrant) -> dict[str, Any]:
    """What launch.js needs of this launch (the page's JSON data block)."""
    return {
        "launchId": grant.launch_id,
        "publicUrl": settings.OHIF_ASSET_URL,
        "tokenUrl": reverse("viewer-token", kwargs={"launch_id": grant.launch_id}),
        "returnUri": grant.return_uri,
        # Where the launch came from, shown in the viewer with whom it was opened as.
        "openedFrom": opened_from(grant),
        "brand": branding.header_brand(services.provider_of(grant)),
        "config": ohif_config(grant),
        "prefetch": prefetch(grant),
        "skipModules": SKIP_MODULES,
        "text": VIEWER_TEXT,
    }


# What OHIF 3.13's bundle loads and registers at start-up that our viewer never uses
# (docs/ohif.md, "What the viewer loads first"): its app initialisation imports every mode
# built into it and three extensions, whatever the configuration says, before it opens the
# study. We open studies in its longitudinal mode (the `/viewer` route) alone; the others
# are other routes. launch.js drops these names as the bundle lists them (`window.modes`,
# `window.extensions`), so their chunks are neither fetched nor run. The longitudinal
# mode's own dependencies (the basic mode's code, the SR, SEG, RT, PMAP, PDF and video
# extensions, measurement tracking) it loads itself, as before. A list of what to drop,
# not of what to keep: a mode a later bundle adds, or renames, is loaded as before.
SKIP_MODULES: dict[str, list[str]] = {
    "modes": [
        "@ohif/mode-basic",
        "@ohif/mode-segmentation",
        "@ohif/mode-tmtv",
        "@ohif/mode-microscopy",
        "@ohif/mode-preclinical-4d",
        "@ohif/mode-ultrasound-pleura-bline",
    ],
    "extensions": ["@ohif/extension-ultrasound-pleura-bline"],
}


# What OHIF 3.13 asks for first when it opens a study (docs/ohif.md, "What the viewer asks
# for first"): the study's QIDO (twice), its series list, the patient's studies (the study
# query by Patient ID), then each series' metadata, with exactly these query strings, then
# the first image's frame. launch.js starts them at once and answers OHIF's requests
# for the same URLs from them.
PREFETCH_STUDY_QUERY = (
    "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
)
PREFETCH_STUDY_QUERY_USES = 2
PREFETCH_SERIES_QUERY = "includefield=00080021%2C00080031%2C0008103E%2C00200011"
PREFETCH_MAX_SERIES = 8
# A study of one series: the first image's frame too, asked for as OHIF 3.13 asks for it
# (its Accept, exactly: quoted, as `omitQuotationForMultipartRequest` is false); which image
# comes first is launch.js's `firstInstance`.
PREFETCH_FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


def prefetch(grant: ViewerGrant) -> dict[str, Any]:
    return {
        "studies": list(grant.study_uids),
        "relayed": grant.relayed,
        "studyQuery": PREFETCH_STUDY_QUERY,
        "studyQueryUses": PREFETCH_STUDY_QUERY_USES,
        "seriesQuery": PREFETCH_SERIES_QUERY,
        "maxSeries": PREFETCH_MAX_SERIES,
        "frameAccept": PREFETCH_FRAME_ACCEPT,
        # The patient's studies, by Patient ID (OHIF's study panel): direct mode only. The
        # relay answers for the launch's own studies alone and refuses that query (403).
        "patientStudies": not grant.relayed,
    }


def opened_from(grant: ViewerGrant) -> dict[str, str]:
    server = services.kheops_server_of(grant)
    return {"album": grant.album_id, "server": server.name if server is not None else ""}


@lru_cache(maxsize=4)
def _index_template(bundle: ohif_bundle.InstalledBundle, mtime_ns: int) -> str:
    html = bundle.index_html.read_text(encoding="utf-8")
    html = _HTML_LANG.sub(_LANG_SLOT, html, count=1)
    html, found = _CONFIG_SCRIPT.subn(_LAUNCH_SLOT, html, count=1)
    if not found:
        raise ohif_bundle.BundleError("the installed index.html has no configuration script")
    # The stylesheet of OHIF's default extension, which its CSS loader would otherwise add,
    # and wait for, only once the app bundle has run; it adds none when the page has a
    # stylesheet link of the same href (ohif_bundle.first_stylesheets). In our page only:
    # the installed index.html stays OHIF's own.
    styles = "".join(
        f'<link rel="stylesheet" href="{escape(bundle.asset_prefix + name)}">'
        for name in ohif_bundle.first_stylesheets(bundle.static_dir)
    )
    banner = (
        f'<link rel="stylesheet" href="{static("launcher/banner.css")}">'
        f'<script defer src="{static("launcher/banner.js")}"></script>'
    )
    return html.replace("</head>", styles + banner + "</head>", 1)


def prepare() -> bool:
    """Build the viewer page's template now (the server's start-up) rather than in the first
    launch's request; False when no bundle is installed."""
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    if bundle is None:
        return False
    _index_template(bundle, bundle.index_html.stat().st_mtime_ns)
    return True


def index_html(grant: ViewerGrant) -> str | None:
    """OHIF's index.html for this launch, or None when no bundle is installed."""
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    if bundle is None:
        return None
    template = _index_template(bundle, bundle.index_html.stat().st_mtime_ns)
    launch = (
        json_script(launch_data(grant), LAUNCH_DATA_ID)
        + f'<script src="{static("launcher/launch.js")}"></script>'
    )
    if not grant.relayed:
        # Direct mode: the connection to KHEOPS (DNS, TCP, TLS) is opened while OHIF's
        # bundle loads, not by the first DICOMweb request. `crossorigin`: those requests
        # carry no cookies (CORS, anonymous), and the browser keeps such connections apart.
        origin = escape(services.origin_of(grant.dicomweb_endpoint))
        launch = f'<link rel="preconnect" href="{origin}" crossorigin>' + launch
    html = template.replace(_LANG_SLOT, f'<html lang="{escape(get_language())}"', 1)
    return html.replace(_LAUNCH_SLOT, launch, 1)
