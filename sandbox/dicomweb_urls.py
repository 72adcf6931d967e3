"""DICOMweb routes of the KHEOPS stand-in, included under `api/` by sandbox/urls.py.

Only the shapes KHEOPS routes (QIDO, WADO-RS, WADO-URI, STOW) reach Orthanc: the relay must
never become a way into the rest of Orthanc's REST API.
"""

from django.urls import path, re_path

from sandbox import dicomweb

app_name = "dicomweb"

UID = r"[0-9]+(?:\.[0-9]+)*"
FRAMES = r"[0-9]+(?:,[0-9]+)*"
# Bulk data as Orthanc's DICOMweb plugin names it: /bulk/<tag>[/<item>/<tag>...].
BULK = r"[0-9A-Fa-f]{8}(?:/[0-9]+/[0-9A-Fa-f]{8})*"
RENDERED = r"(?:rendered|thumbnail)"
INSTANCE_TAIL = rf"(?:/(?:metadata|{RENDERED}|frames/{FRAMES}(?:/{RENDERED})?|bulk/{BULK}))?"
SERIES_TAIL = rf"(?:/(?:metadata|{RENDERED}|instances(?:/{UID}{INSTANCE_TAIL})?))?"
STUDY_REST = rf"(?:instances|{RENDERED}|series/{UID}{SERIES_TAIL})"

urlpatterns = [
    path("studies", dicomweb.studies, name="studies"),
    re_path(rf"^studies/(?P<study_uid>{UID})$", dicomweb.study, name="study"),
    re_path(rf"^studies/(?P<study_uid>{UID})/series$", dicomweb.study_series, name="study-series"),
    re_path(
        rf"^studies/(?P<study_uid>{UID})/metadata$", dicomweb.study_metadata, name="study-metadata"
    ),
    re_path(
        rf"^studies/(?P<study_uid>{UID})/(?P<rest>{STUDY_REST})$",
        dicomweb.study_resource,
        name="study-resource",
    ),
    path("wado", dicomweb.wado_uri_entry, name="wado-uri"),
]
