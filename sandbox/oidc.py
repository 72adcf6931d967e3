"""The stand-in's OpenID Connect provider: the role Keycloak plays beside KHEOPS for the
viewer's admin sign-in. django-oauth-toolkit does the protocol (discovery, JWKS, the
authorization code flow with PKCE, RS256 ID tokens, RP-initiated logout); this adds what
Keycloak's client settings would: a `groups` claim in the ID token (Keycloak's group
membership mapper, "full group path" off), the sign-in page, and the set-up command's work.

Its users are Django auth users of the stand-in (not the KHEOPS users of sandbox.models),
their groups Django groups. Issuer: ROOT/oidc.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.urls import path
from oauth2_provider import views as toolkit_views
from oauth2_provider.models import get_application_model
from oauth2_provider.oauth2_validators import OAuth2Validator

GROUPS_CLAIM = "groups"


class GroupsClaimValidator(OAuth2Validator):
    # Every ID token carries the groups (with the openid scope), and the user's name and
    # e-mail with the profile and email scopes, as Keycloak's default mappers do.
    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, GROUPS_CLAIM: "openid"}

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            GROUPS_CLAIM: sorted(user.groups.values_list("name", flat=True)),
            "preferred_username": user.username,
            "name": user.get_full_name() or user.username,
            "given_name": user.first_name,
            "family_name": user.last_name,
            "email": user.email,
        }


class SignIn(LoginView):
    template_name = "sandbox/idp_login.html"


# The toolkit's views under their own names (the discovery document reverses them).
urlpatterns = [
    path("authorize/", toolkit_views.AuthorizationView.as_view(), name="authorize"),
    path("token/", toolkit_views.TokenView.as_view(), name="token"),
    path(
        ".well-known/openid-configuration",
        toolkit_views.ConnectDiscoveryInfoView.as_view(),
        name="oidc-connect-discovery-info",
    ),
    path(".well-known/jwks.json", toolkit_views.JwksInfoView.as_view(), name="jwks-info"),
    path("userinfo/", toolkit_views.UserInfoView.as_view(), name="user-info"),
    path("logout/", toolkit_views.RPInitiatedLogoutView.as_view(), name="rp-initiated-logout"),
]


@transaction.atomic
def set_up(config: dict[str, Any]) -> None:
    """Create or update the client and the users `config` describes (idempotent):

    {"client_id", "client_secret", "client_name", "redirect_uris": [...],
     "post_logout_redirect_uris": [...],
     "users": [{"username", "password", "first_name", "last_name", "email", "groups": [...]}]}
    """
    Application = get_application_model()
    client, _ = Application.objects.get_or_create(
        client_id=config["client_id"],
        defaults={
            "name": config.get("client_name", "kheops-ohif admin"),
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
        },
    )
    client.name = config.get("client_name", client.name)
    client.client_type = Application.CLIENT_CONFIDENTIAL
    client.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
    client.client_secret = config["client_secret"]  # kept hashed by the toolkit
    client.redirect_uris = " ".join(config["redirect_uris"])
    client.post_logout_redirect_uris = " ".join(config.get("post_logout_redirect_uris", []))
    client.algorithm = Application.RS256_ALGORITHM
    client.skip_authorization = True  # a hospital's own client: no consent screen
    client.save()
    for entry in config.get("users", []):
        user, _ = User.objects.get_or_create(username=entry["username"])
        user.first_name = entry.get("first_name", "")
        user.last_name = entry.get("last_name", "")
        user.email = entry.get("email", "")
        user.set_password(entry["password"])
        user.save()
        user.groups.set(
            [Group.objects.get_or_create(name=name)[0] for name in entry.get("groups", [])]
        )
