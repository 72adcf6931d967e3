"""A stand-in for the KHEOPS side of the report-provider protocol (NOT KHEOPS itself).

It is a separate Django project (`DJANGO_SETTINGS_MODULE=sandbox.settings`) so that the viewer
can be exercised end to end against a server that speaks the protocol as KHEOPS does, quirks
included. See sandbox/README.md.
"""
