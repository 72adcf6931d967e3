from __future__ import annotations

from typing import Any

from oauth2_provider.contrib.rest_framework import TokenHasScope
from rest_framework.request import Request


class TokenHasScopeOrStaffSession(TokenHasScope):
    """A bearer token carrying the view's `required_scopes`, or a staff member logged into
    the admin who may view the model in the admin too.

    A token is judged by its scopes alone, never by the user it may belong to: a token with
    the wrong scope is refused even when an admin's application issued it.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.auth is not None:
            return super().has_permission(request, view)
        user = request.user
        if user is None or not (user.is_active and user.is_staff):
            return False
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return True  # the API root: a list of links
        meta = queryset.model._meta
        return user.has_perm(f"{meta.app_label}.view_{meta.model_name}")
