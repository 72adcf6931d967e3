from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from oauth2_provider.forms import ApplicationForm
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_id_token_model,
    get_refresh_token_model,
)

from launcher import audit, branding, dashboard, kheops, services
from launcher.modalities import MODALITIES
from launcher.models import (
    KheopsServer,
    LaunchRecord,
    LaunchWrite,
    Provider,
    SigningKey,
    TokenDelivery,
)

# The index lists every section already: the navigation sidebar only took 300 px from the
# lists, which then no longer fitted a 1440 px screen.
admin.site.enable_nav_sidebar = False
admin.site.site_header = _("KHEOPS → OHIF administration")
admin.site.site_title = _("KHEOPS → OHIF")


@admin.register(KheopsServer)
class KheopsServerAdmin(admin.ModelAdmin):
    # The discovery URL is the root URL plus a fixed path: on the server's page only.
    list_display = [
        "name",
        "root_url",
        "enabled",
        "last_successful_launch",
        "recent_failures",
        "recent_replays",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "root_url"]
    readonly_fields = ["discovery_document_url"]
    actions = ["test_connection"]

    @admin.display(description=_("discovery document URL"))
    def discovery_document_url(self, server: KheopsServer) -> str:
        return server.discovery_url if server.pk else "-"

    def get_queryset(self, request: HttpRequest) -> QuerySet[KheopsServer]:
        return dashboard.with_launch_counts(super().get_queryset(request))

    @admin.display(description=_("last successful launch"), ordering="last_success_at")
    def last_successful_launch(self, server: KheopsServer) -> datetime | None:
        return server.last_success_at  # type: ignore[attr-defined]

    @admin.display(description=_("failed launches, last 24 h"), ordering="failures_in_window")
    def recent_failures(self, server: KheopsServer) -> int:
        return server.failures_in_window  # type: ignore[attr-defined]

    @admin.display(description=_("refused as replays, last 24 h"), ordering="replays_in_window")
    def recent_replays(self, server: KheopsServer) -> int:
        return server.replays_in_window  # type: ignore[attr-defined]

    @admin.action(description=_("Test connection (fetch and validate the discovery document)"))
    def test_connection(self, request: HttpRequest, queryset: QuerySet[KheopsServer]) -> None:
        servers = list(queryset)
        verdicts = services.check_servers(servers, timeout=settings.KHEOPS_HTTP_TIMEOUT)
        for server, verdict in zip(servers, verdicts, strict=True):
            level = messages.ERROR if isinstance(verdict, kheops.KheopsError) else messages.SUCCESS
            self.message_user(request, f"{server.name}: {verdict}", level)


class ProviderForm(forms.ModelForm):
    # Still a JSON list in the model (the configuration document and the API are
    # unchanged); here, boxes to tick, each code with its name.
    supported_modalities = forms.MultipleChoiceField(
        label=_("Modalities"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=Provider._meta.get_field("supported_modalities").help_text,
    )

    logo_upload = forms.FileField(
        label=_("Logo"),
        required=False,
        help_text=_(
            "PNG, JPEG or WebP, at most 256 KB, shown 28 px high (a wide logo at most 96 px "
            "wide). Without one, the viewer shows a neutral mark."
        ),
        widget=forms.FileInput(attrs={"accept": "image/png,image/jpeg,image/webp"}),
    )
    remove_logo = forms.BooleanField(label=_("Remove the logo"), required=False)

    class Meta:
        model = Provider
        fields = [
            "client_name",
            "slug",
            "mode",
            "token_delivery",
            "supported_modalities",
            "enabled",
            "is_default",
            "viewer_title",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The empty choice says what it means on this server (DICOMWEB_RELAY).
        default = "relay" if settings.DICOMWEB_RELAY else "direct"
        self.fields["token_delivery"].choices = [
            ("", _("Server default (now: %(mode)s)") % {"mode": default}),
            *TokenDelivery.choices,
        ]
        stored = self.instance.supported_modalities or []
        # A code stored before (through the API or a script) stays choosable, unnamed.
        unknown = [code for code in stored if isinstance(code, str) and code not in MODALITIES]
        self.fields["supported_modalities"].choices = [
            (code, f"{code} ({name})") for code, name in MODALITIES.items()
        ] + [(code, code) for code in unknown]

    def clean_logo_upload(self) -> bytes | None:
        upload = self.cleaned_data.get("logo_upload")
        if not upload:
            return None
        if upload.size > branding.MAX_LOGO_BYTES:
            raise forms.ValidationError(_("The logo is larger than 256 KB."))
        image = upload.read()
        # By its bytes, not its name or declared type. SVG is refused: it can carry script.
        if branding.image_type(image) is None:
            raise forms.ValidationError(_("The logo must be a PNG, JPEG or WebP image."))
        return image


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = [
        "client_name",
        "slug",
        "mode",
        "token_delivery_in_use",
        "enabled",
        "is_default",
        "configuration_url",
    ]
    list_filter = ["enabled", "mode"]
    readonly_fields = ["configuration_url_to_copy", "launch_url", "current_logo"]
    prepopulated_fields = {"slug": ["client_name"]}
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "client_name",
                    "slug",
                    "mode",
                    "token_delivery",
                    "supported_modalities",
                    "enabled",
                    "is_default",
                ]
            },
        ),
        (_("Registration in KHEOPS"), {"fields": ["configuration_url_to_copy", "launch_url"]}),
        (
            _("The viewer's header"),
            {"fields": ["viewer_title", "current_logo", "logo_upload", "remove_logo"]},
        ),
    ]

    class Media:
        js = ["launcher/copy.js"]

    @admin.display(description=_("token delivery"))
    def token_delivery_in_use(self, provider: Provider) -> str:
        if provider.token_delivery:
            return provider.token_delivery
        return _("%(mode)s (server default)") % {"mode": provider.effective_token_delivery}

    @admin.display(description=_("launch URL"))
    def launch_url(self, provider: Provider) -> str:
        if not provider.pk:  # no short name yet, hence no URL
            return _("Filled in automatically when saved.")
        return format_html(
            '{}<div class="readonly-help">{}</div>',
            provider.redirect_uri,
            _(
                "Where KHEOPS sends clinicians (the redirect_uri of the configuration); nothing to do."
            ),
        )

    def save_model(
        self, request: HttpRequest, obj: Provider, form: ProviderForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("logo_upload"):
            branding.store_logo(obj, form.cleaned_data["logo_upload"])
        elif form.cleaned_data.get("remove_logo"):
            branding.store_logo(obj, None)

    @admin.display(description=_("current logo"))
    def current_logo(self, provider: Provider) -> str:
        if not provider.logo_url:
            return _("None: the viewer shows a neutral mark.")
        return format_html(
            '<img class="provider-logo" src="{}" alt="{}">', provider.logo_url, _("logo")
        )

    @admin.display(description=_("configuration URL"))
    def configuration_url_to_copy(self, provider: Provider) -> str:
        if not provider.pk:
            return _("Shown when saved: the address to register in KHEOPS.")
        return format_html(
            '{}<div class="readonly-help">{}</div>',
            copy_field(
                provider.configuration_url,
                field_id="configuration-url",
                label=_("configuration URL"),
            ),
            _(
                "Register it in KHEOPS: in the album's settings, add a report provider with this URL."
            ),
        )


def copy_field(value: str, *, field_id: str, label: str) -> str:
    return render_to_string(
        "launcher/copy_field.html", {"value": value, "field_id": field_id, "label": label}
    )


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    # The sealed private key is never shown: only what the JWKS publishes anyway, and whether
    # the private key still exists (purge_keys destroys it after the grace period).
    list_display = ["kid", "created_at", "active", "retired_at", "private_key_kept"]
    fields = ["kid", "created_at", "active", "retired_at", "private_key_kept", "public_jwk"]
    readonly_fields = fields

    @admin.display(description=_("private key kept"), boolean=True)
    def private_key_kept(self, key: SigningKey) -> bool:
        return bool(key.sealed_private_key)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SigningKey | None = None) -> bool:
        return False


class ReadOnlyAdminMixin:
    """The audit trail is written by the server alone: admins read it, never change it."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def instances_list(write: LaunchWrite) -> str:
    """The instances an upload stored and refused, one a line: SOP class, SOP instance."""
    stored = format_html_join(
        "",
        "<div>{} {}</div>",
        (
            (item.get("sop_class_uid", ""), item.get("sop_instance_uid", ""))
            for item in write.stored
        ),
    )
    refused = format_html_join(
        "",
        "<div>{} {} ({} {})</div>",
        (
            (
                item.get("sop_class_uid", ""),
                item.get("sop_instance_uid", ""),
                _("refused, reason"),
                item.get("reason", ""),
            )
            for item in write.failed
        ),
    )
    return format_html("{}{}", stored, refused) or "-"


class LaunchWriteInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = LaunchWrite
    fields = ["created_at", "study_uid", "status", "instances", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description=_("instances (SOP class, SOP instance)"))
    def instances(self, write: LaunchWrite) -> str:
        return instances_list(write)


@admin.register(LaunchWrite)
class LaunchWriteAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Each upload through the relay (relay mode) and what KHEOPS answered."""

    list_display = [
        "created_at",
        "user",
        "study_uid",
        "status",
        "stored_count",
        "failed_count",
        "launch",
    ]
    list_filter = ["status", "created_at"]
    # A study UID, a user (id, name or e-mail), or a launch id.
    search_fields = [
        "study_uid",
        "launch__user_name",
        "launch__user_email",
        "launch__user_sub",
        "launch__launch_id",
    ]
    date_hierarchy = "created_at"
    list_select_related = ["launch"]
    fields = ["created_at", "launch", "user", "study_uid", "status", "instances", "note"]
    readonly_fields = fields

    @admin.display(description=_("user"), ordering="launch__user_name")
    def user(self, write: LaunchWrite) -> str:
        return write.launch.user_name or write.launch.user_sub

    @admin.display(description=_("instances (SOP class, SOP instance)"))
    def instances(self, write: LaunchWrite) -> str:
        return instances_list(write)


@admin.register(LaunchRecord)
class LaunchRecordAdmin(admin.ModelAdmin):
    # What fits a 1440 px screen; the album, e-mail and studies are on the record's page.
    list_display = [
        "created_at",
        "outcome",
        "verified",
        "kheops_server",
        "provider",
        "user_name",
        "remote_addr",
    ]
    list_filter = ["outcome", "verified", "kheops_server", "provider", "created_at"]
    # The search box finds a study UID, a user (id, name or e-mail), a client or an album.
    search_fields = ["study_uids", "user_name", "user_email", "user_sub", "client_id", "album_id"]
    date_hierarchy = "created_at"
    list_select_related = ["kheops_server", "provider"]
    actions = ["export_csv"]
    inlines = [LaunchWriteInline]

    @admin.action(description=_("Export selected launch records as CSV"), permissions=["view"])
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[LaunchRecord]
    ) -> StreamingHttpResponse:
        # Streamed: "select all" on a big audit trail must not be built in memory.
        lines = audit.csv_lines(audit.export_queryset(queryset))
        response = StreamingHttpResponse(
            audit.streamed(lines) if isinstance(request, ASGIRequest) else lines,
            content_type="text/csv; charset=utf-8",
        )
        filename = f"launch-records-{timezone.now():%Y%m%d-%H%M%S}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response  # the admin marks it no-store: no copy in any cache on the way

    def get_readonly_fields(
        self, request: HttpRequest, obj: LaunchRecord | None = None
    ) -> list[str]:
        return [field.name for field in LaunchRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LaunchRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LaunchRecord | None = None) -> bool:
        return False


# --- The audit API's clients (django-oauth-toolkit) -----------------------------------
# Tokens, grants and ID tokens are the toolkit's own bookkeeping: an admin never edits
# them (`manage.py cleartokens` deletes the expired ones; deleting a client deletes its
# tokens).
for toolkit_model in (
    get_access_token_model(),
    get_refresh_token_model(),
    get_grant_model(),
    get_id_token_model(),
):
    admin.site.unregister(toolkit_model)
ApiClient = get_application_model()
admin.site.unregister(ApiClient)


class ApiClientForm(ApplicationForm):
    """The toolkit's form (its "copy the secret before saving" help), for the one kind of
    client the audit API takes: confidential, client-credentials grant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance.pk:
            self.instance.client_type = ApiClient.CLIENT_CONFIDENTIAL
            self.instance.authorization_grant_type = ApiClient.GRANT_CLIENT_CREDENTIALS


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    form = ApiClientForm
    list_display = ["name", "client_id", "created"]
    search_fields = ["name", "client_id"]
    fields = ["name", "client_id", "client_secret", "client_type", "authorization_grant_type"]
    readonly_fields = ["client_type", "authorization_grant_type"]
    # Its get_absolute_url names the toolkit's own pages, which are not served here.
    view_on_site = False

    # The form posts the new client's secret: no error report may show it.
    @method_decorator(sensitive_post_parameters("client_secret"))
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().changeform_view(request, object_id, form_url, extra_context)


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """django-axes's answer to a locked-out admin sign-in (AXES_LOCKOUT_CALLABLE): what
    happened, for how long and what to do, with status 429 and Retry-After."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    response = render(
        request,
        "admin/locked_out.html",
        {
            "username": username[:150],
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "minutes": max(1, seconds // 60),
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response
