"""The read-only audit API for hospitals' own tools (`/api/v1/`).

Callers are OAuth 2 clients of django-oauth-toolkit (client-credentials grant, scope
`audit:read`), or staff members logged into the Django admin (the browsable API). The
public KHEOPS documents in `launcher.views` keep the anonymous, JSON-only defaults: every
view here sets its own authentication, permissions and renderers.
"""
