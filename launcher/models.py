from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext_lazy as _

from launcher import kheops

# KHEOPS serves its discovery document at a fixed path under its root.
DISCOVERY_PATH = "/api/.well-known/report-provider-configuration"


def validate_root_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(_("Enter the KHEOPS root URL, e.g. https://kheops.example.org"))
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValidationError(_("The root URL must not contain user info, a query or a fragment."))
    if value.endswith("/"):
        raise ValidationError(_("Leave out the trailing slash: KHEOPS compares URLs as strings."))
    if not kheops.is_confidential(value) and not settings.ALLOW_INSECURE_HTTP_KHEOPS:
        raise ValidationError(PLAIN_HTTP_REFUSED)


PLAIN_HTTP_REFUSED = _(
    "Use the https address of this KHEOPS server: over plain http, launch codes, this "
    "viewer's signed assertions and access tokens would cross the network in clear. "
    "(Plain http is accepted for localhost, 127.0.0.1 and ::1 only.)"
)


class KheopsServer(models.Model):
    """A KHEOPS instance an administrator trusts to launch the viewer."""

    name = models.CharField(_("name"), max_length=100)
    root_url = models.CharField(
        _("root URL (issuer)"),
        max_length=300,
        unique=True,
        validators=[validate_root_url],
        help_text=_(
            "Exactly the issuer of its discovery document, e.g. https://demo.kheops.online "
            "(https; plain http only for a KHEOPS on this machine: localhost, 127.0.0.1)."
        ),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("trusted KHEOPS server")
        verbose_name_plural = _("trusted KHEOPS servers")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def discovery_url(self) -> str:
        return f"{self.root_url}{DISCOVERY_PATH}"

    @property
    def plain_http(self) -> bool:
        """Whether calls to it would cross the network in clear (refused, unless
        ALLOW_INSECURE_HTTP_KHEOPS)."""
        return not kheops.is_confidential(self.root_url)


class OhifMode(models.TextChoices):
    # The route of each OHIF 3.13 mode kept by our pruned bundle (microscopy is pruned).
    VIEWER = "viewer", _("Basic viewer (measurements)")
    SEGMENTATION = "segmentation", _("Segmentation")
    BASIC = "basic", _("Basic")
    TMTV = "tmtv", _("Total metabolic tumour volume")
    DYNAMIC_VOLUME = "dynamic-volume", _("Dynamic volume")
    US_ANNOTATION = "usAnnotation", _("Ultrasound annotation")


class TokenDelivery(models.TextChoices):
    # How the viewer's DICOMweb requests carry the KHEOPS token (README, "Token delivery").
    DIRECT = "direct", _("Direct: the viewer's script holds the token and calls KHEOPS")
    RELAY = "relay", _("Relay: the token stays on this server, which forwards the requests")


class Provider(models.Model):
    """What a KHEOPS album admin registers: one configuration document and launch URL."""

    slug = models.SlugField(
        _("short name"),
        unique=True,
        help_text=_(
            "Lower-case letters, digits and hyphens. It names this provider's addresses "
            "(…/providers/short-name/configuration and …/launch): changing it changes them, "
            "and KHEOPS albums that registered the old configuration URL stop working."
        ),
    )
    client_name = models.CharField(
        _("name in KHEOPS"),
        max_length=100,
        help_text=_(
            "What clinicians see in the study menu of a KHEOPS album, e.g. “OHIF Viewer”. "
            "KHEOPS reads it when an album admin registers the configuration URL."
        ),
    )
    mode = models.CharField(
        _("OHIF mode"),
        max_length=32,
        choices=OhifMode.choices,
        default=OhifMode.VIEWER,
        help_text=_("The set of OHIF tools the study opens with."),
    )
    supported_modalities = models.JSONField(
        _("modalities"),
        default=list,
        blank=True,
        help_text=_(
            "KHEOPS offers this viewer only for studies with one of the chosen modalities. "
            "None chosen: for every study."
        ),
    )
    enabled = models.BooleanField(
        _("enabled"),
        default=True,
        help_text=_("Untick to refuse its launches (clinicians are told so) without deleting it."),
    )
    is_default = models.BooleanField(
        _("default provider"),
        default=False,
        help_text=_(
            "Its configuration is also served at /.well-known/kheops-report-configuration."
        ),
    )
    token_delivery = models.CharField(
        _("token delivery"),
        max_length=16,
        choices=TokenDelivery.choices,
        blank=True,
        help_text=_(
            "Relay keeps the KHEOPS token out of the browser: this server forwards the "
            "viewer's DICOMweb requests (all image data passes through it). Empty: the "
            "server's default (DICOMWEB_RELAY)."
        ),
    )
    # White label: what the viewer's header shows (launcher/branding.py).
    viewer_title = models.CharField(
        _("name in the viewer"),
        max_length=60,
        blank=True,
        help_text=_(
            "Shown in the viewer's header next to the logo, e.g. the hospital's name. "
            "Empty: the name in KHEOPS."
        ),
    )
    # Names the logo's URL (a hash of its bytes); empty: no logo, a neutral mark instead.
    logo_digest = models.CharField(max_length=16, blank=True, editable=False)

    class Meta:
        verbose_name = _("provider")
        verbose_name_plural = _("providers")
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="launcher_one_default_provider",
            )
        ]

    def __str__(self) -> str:
        return self.client_name

    def clean(self) -> None:
        modalities = self.supported_modalities
        if not isinstance(modalities, list) or not all(
            isinstance(m, str) and m.isalnum() and m.isupper() and len(m) <= 16 for m in modalities
        ):
            raise ValidationError(
                {"supported_modalities": _('A list of modality codes such as ["CT", "MR"].')}
            )

    # Absolute URLs built from PUBLIC_BASE_URL: KHEOPS requires redirect_uri and jwks_uri to
    # share the configuration URL's scheme and authority *as strings*.
    @property
    def effective_token_delivery(self) -> str:
        """This provider's choice, or the server's default (DICOMWEB_RELAY) if it made none."""
        if self.token_delivery:
            return self.token_delivery
        return TokenDelivery.RELAY if settings.DICOMWEB_RELAY else TokenDelivery.DIRECT

    @property
    def configuration_url(self) -> str:
        return public_url("provider-configuration", slug=self.slug)

    @property
    def redirect_uri(self) -> str:
        return public_url("launch", slug=self.slug)

    @property
    def logo_url(self) -> str | None:
        if not self.logo_digest:
            return None
        return reverse("provider-logo", kwargs={"slug": self.slug, "digest": self.logo_digest})


class ProviderLogo(models.Model):
    """A provider's logo, in the database: no media storage to run or back up apart.

    Kept out of the provider's row, which launches, lists and joins read all the time.
    """

    provider = models.OneToOneField(
        Provider, on_delete=models.CASCADE, primary_key=True, related_name="logo"
    )
    image = models.BinaryField()
    content_type = models.CharField(max_length=16)
    digest = models.CharField(max_length=16)

    def __str__(self) -> str:
        return f"logo of {self.provider_id}"


def public_url(view_name: str, **kwargs: str) -> str:
    path = reverse(view_name, kwargs=kwargs or None)
    # reverse() includes FORCE_SCRIPT_NAME, which PUBLIC_BASE_URL already carries.
    return settings.PUBLIC_BASE_URL + path.removeprefix(settings.SCRIPT_NAME)


class SigningKey(models.Model):
    """An RSA key pair for our client assertions; the private half is sealed at rest."""

    kid = models.CharField(_("key id (kid)"), max_length=64, unique=True)
    public_jwk = models.JSONField(_("public key (JWK)"))
    sealed_private_key = models.TextField(editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    active = models.BooleanField(_("active"), default=True)
    retired_at = models.DateTimeField(_("retired"), null=True, blank=True)

    class Meta:
        verbose_name = _("signing key")
        verbose_name_plural = _("signing keys")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["active"], condition=models.Q(active=True), name="launcher_one_active_key"
            )
        ]

    def __str__(self) -> str:
        return self.kid


class UsedCode(models.Model):
    """Authorization codes already presented to us (a hash only), to refuse replays.

    KHEOPS codes stay valid and reusable for 10 minutes; the unique primary key makes the
    claim atomic across processes and servers sharing the database.
    """

    code_hash = models.CharField(max_length=64, primary_key=True)
    used_at = models.DateTimeField(db_index=True)
    # The launch that claimed it: a second click in the same browser goes to its viewer.
    launch_id = models.CharField(max_length=32, blank=True)

    def __str__(self) -> str:
        return f"code used at {self.used_at:%Y-%m-%d %H:%M:%S}"


class LaunchOutcome(models.TextChoices):
    # Labels an admin reads in the lists and filters: opened, accepted, refused (the launch
    # was not acceptable) or failed (KHEOPS let it down).
    SUCCESS = "success", _("Viewer opened")
    # The launch was accepted and its viewer is loading; the code is exchanged when the
    # viewer asks for its token. A launch whose viewer never asked stays pending.
    PENDING = "pending", _("Accepted, viewer not loaded (yet)")
    BAD_REQUEST = "bad_request", _("Refused: invalid launch link")
    UNKNOWN_PROVIDER = "unknown_provider", _("Refused: unknown provider")
    PROVIDER_DISABLED = "provider_disabled", _("Refused: provider disabled")
    UNTRUSTED_SERVER = "untrusted_server", _("Refused: KHEOPS server not trusted")
    # Trusted by a plain-http address to another machine (saved before this was refused).
    INSECURE_SERVER = "insecure_server", _("Refused: KHEOPS server over plain http")
    REPLAY = "replay", _("Refused: link already used (replay)")
    # The same browser presented its own launch's code again (a double click in KHEOPS
    # makes two identical links): sent to the viewer it already has.
    REOPENED = "reopened", _("Link used again by the same browser: sent to its viewer")
    CODE_REJECTED = "code_rejected", _("Failed: KHEOPS refused the code")
    KHEOPS_UNAVAILABLE = "kheops_unavailable", _("Failed: KHEOPS unavailable")
    KHEOPS_TIMEOUT = "kheops_timeout", _("Failed: KHEOPS did not answer in time")
    KHEOPS_MALFORMED = "kheops_malformed", _("Failed: KHEOPS's answer not understood")
    # Too many launches from one client address in a short time (launcher.ratelimit).
    RATE_LIMITED = "rate_limited", _("Refused: too many launches from this address")


class LaunchRecord(models.Model):
    """The audit trail: one row per launch attempt, whatever its outcome. Never a secret."""

    # What a launch *wrote* through the relay (SR, segmentations): `writes` (LaunchWrite).

    launch_id = models.CharField(_("launch id"), max_length=32, unique=True, null=True, blank=True)
    provider = models.ForeignKey(
        Provider,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("provider"),
    )
    kheops_server = models.ForeignKey(
        KheopsServer,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("KHEOPS server"),
    )
    client_id = models.CharField(_("KHEOPS client id"), max_length=64, blank=True)
    album_id = models.CharField(_("album id"), max_length=64, blank=True)
    study_uids = models.JSONField(_("study UIDs"), default=list, blank=True)
    user_sub = models.CharField(_("KHEOPS user id"), max_length=255, blank=True)
    user_name = models.CharField(_("user"), max_length=255, blank=True)
    user_email = models.CharField(_("user e-mail"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)
    expires_at = models.DateTimeField(_("access until"), null=True, blank=True)
    outcome = models.CharField(
        _("outcome"), max_length=32, choices=LaunchOutcome.choices, db_index=True
    )
    failure_detail = models.CharField(_("failure detail"), max_length=255, blank=True)
    remote_addr = models.GenericIPAddressField(_("from address"), null=True, blank=True)
    # Until KHEOPS has accepted the launch's code, everything in the record (client id,
    # album, studies) is only what the launch URL claimed: anyone can forge one.
    verified = models.BooleanField(
        _("verified by KHEOPS"),
        default=False,
        help_text=_("KHEOPS accepted the launch's code: the record's details are genuine."),
    )

    class Meta:
        verbose_name = _("launch record")
        verbose_name_plural = _("launch records")
        ordering = ["-created_at", "-id"]
        indexes = [
            # "Who opened what, newest first": the audit API's user filter.
            models.Index(fields=["user_sub", "-created_at"], name="launcher_launch_user_idx"),
        ]

    def __str__(self) -> str:
        # The title of the record's admin page, e.g. "Refused: link already used (replay),
        # 2026-11-29 15:51 UTC".
        if self.created_at is None:
            return str(self.get_outcome_display())
        when = date_format(timezone.localtime(self.created_at), "DATETIME_FORMAT")
        return f"{self.get_outcome_display()}, {when}"


class LaunchWrite(models.Model):
    """One upload (STOW-RS) through the relay of a launch, and what KHEOPS answered.

    Written by launcher.stow once KHEOPS's answer has passed to the browser (or failed to).
    The user is the launch record's. Never the token, never the uploaded data."""

    launch = models.ForeignKey(
        LaunchRecord,
        on_delete=models.PROTECT,
        related_name="writes",
        verbose_name=_("launch record"),
    )
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)
    # The study the upload named, or (an upload to `studies`) the one KHEOPS's answer names.
    study_uid = models.CharField(_("study UID"), max_length=64, blank=True, db_index=True)
    # Empty: KHEOPS never answered (unreachable, timed out, the upload broken off).
    status = models.PositiveSmallIntegerField(_("KHEOPS's HTTP status"), null=True, blank=True)
    # [{"sop_instance_uid": ..., "sop_class_uid": ...}], from ReferencedSOPSequence.
    stored = models.JSONField(_("instances stored"), default=list, blank=True)
    stored_count = models.PositiveIntegerField(_("stored"), default=0)
    # The same with "reason" (the DICOM FailureReason), from FailedSOPSequence.
    failed = models.JSONField(_("instances refused"), default=list, blank=True)
    failed_count = models.PositiveIntegerField(_("refused"), default=0)
    # What kept us from reading KHEOPS's answer, if anything (not JSON, cut off, ...).
    note = models.CharField(_("note"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("write through the relay")
        verbose_name_plural = _("writes through the relay")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.stored_count} stored, {self.failed_count} refused ({self.status or '-'})"


class GrantState(models.TextChoices):
    PENDING = "pending", _("code not yet exchanged")
    READY = "ready", _("token ready")
    FAILED = "failed", _("exchange failed")


class LaunchGrant(models.Model):
    """What the viewer of one launch needs, bound to the browser that launched.

    The browser holds a random key in a cookie scoped to this launch's viewer path; the row
    keeps only its hash, so the viewer answers no other browser. A launch first stores the
    sealed code (state pending) and redirects at once; the viewer's first token request
    exchanges it, forgets it and keeps the sealed KHEOPS token instead (ready), or keeps why
    the exchange failed (failed).
    """

    launch_id = models.CharField(max_length=32, primary_key=True)
    browser_key_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=GrantState.choices, default=GrantState.READY)
    sealed_code = models.TextField(blank=True)
    sealed_token = models.TextField(blank=True)
    # Pending: until the code expires; ready: until the token expires.
    expires_at = models.DateTimeField(db_index=True)
    client_id = models.CharField(max_length=64, blank=True)
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.SET_NULL)
    kheops_server = models.ForeignKey(
        KheopsServer, null=True, blank=True, on_delete=models.SET_NULL
    )
    dicomweb_endpoint = models.CharField(max_length=300)
    study_uids = models.JSONField(default=list)
    mode = models.CharField(max_length=32)
    # Fixed at launch (the provider's choice then): a viewer keeps its data source.
    token_delivery = models.CharField(
        max_length=16, choices=TokenDelivery.choices, default=TokenDelivery.DIRECT
    )
    return_uri = models.CharField(max_length=2048, blank=True)
    album_id = models.CharField(max_length=64, blank=True)
    # Whom the viewer was opened as (KHEOPS userinfo), shown in the viewer.
    user_name = models.CharField(max_length=255, blank=True)
    user_email = models.CharField(max_length=255, blank=True)
    # The hash of the launching browser's key on the launch path (views.LAUNCHER_COOKIE):
    # the same browser presenting the same code again is sent to this viewer.
    launcher_key_hash = models.CharField(max_length=64, blank=True)
    failure_status = models.PositiveSmallIntegerField(null=True, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    # What the clinician can do about it (services.ADVICE).
    failure_advice = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name = _("viewer grant")
        verbose_name_plural = _("viewer grants")

    def __str__(self) -> str:
        return f"viewer grant {self.launch_id}"


class RateCounter(models.Model):
    """Requests of one kind from one client address in the current period (launcher.ratelimit),
    when there is no Redis: shared by every server process, counted by one atomic statement."""

    key = models.CharField(max_length=100, primary_key=True)
    # When the current period ends (Unix seconds): a request after it starts a new count.
    period_end = models.BigIntegerField(db_index=True)
    hits = models.PositiveIntegerField()

    class Meta:
        verbose_name = _("rate counter")

    def __str__(self) -> str:
        return f"{self.key}: {self.hits}"
