"""What the audit API shows. Every field is listed explicitly: a field added to a model
later stays out of the API until someone decides it belongs here (no secret can leak in
by default). Signing keys, API client secrets and tokens have no serializer at all."""

from __future__ import annotations

from rest_framework import serializers

from launcher.models import KheopsServer, LaunchRecord, LaunchWrite, Provider, TokenDelivery


class KheopsServerSerializer(serializers.ModelSerializer):
    class Meta:
        model = KheopsServer
        fields = ["id", "name", "root_url", "discovery_url", "enabled", "created_at"]
        read_only_fields = fields


class KheopsServerRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = KheopsServer
        fields = ["id", "name", "root_url"]
        read_only_fields = fields


class ProviderSerializer(serializers.ModelSerializer):
    supported_modalities = serializers.ListField(child=serializers.CharField(), read_only=True)
    # "direct" (the viewer's script holds the KHEOPS token) or "relay" (it stays on the
    # server): the provider's choice, or the server's default (DICOMWEB_RELAY).
    token_delivery = serializers.ChoiceField(
        source="effective_token_delivery", choices=TokenDelivery.choices, read_only=True
    )

    class Meta:
        model = Provider
        fields = [
            "slug",
            "client_name",
            "mode",
            "token_delivery",
            "supported_modalities",
            "enabled",
            "is_default",
            "configuration_url",
            "redirect_uri",
        ]
        read_only_fields = fields


class LaunchUserSerializer(serializers.Serializer):
    """Who launched, as KHEOPS's userinfo endpoint told us (empty when it did not)."""

    sub = serializers.CharField(source="user_sub", read_only=True)
    name = serializers.CharField(source="user_name", read_only=True)
    email = serializers.CharField(source="user_email", read_only=True)


class LaunchWriteSerializer(serializers.ModelSerializer):
    """One upload through the relay (relay mode): KHEOPS's HTTP status (null: it never
    answered), the instances it stored and refused ({sop_instance_uid, sop_class_uid},
    plus the DICOM FailureReason for a refused one), and a note when its answer could not
    be read. The user is the launch record's."""

    class Meta:
        model = LaunchWrite
        fields = ["id", "created_at", "study_uid", "status", "stored", "failed", "note"]
        read_only_fields = fields


class LaunchRecordSerializer(serializers.ModelSerializer):
    kheops_server = KheopsServerRefSerializer(read_only=True)
    provider = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    study_uids = serializers.ListField(child=serializers.CharField(), read_only=True)
    user = LaunchUserSerializer(source="*", read_only=True)
    # What the launch's viewer stored through the relay, newest first (direct mode: none).
    writes = LaunchWriteSerializer(many=True, read_only=True)

    class Meta:
        model = LaunchRecord
        fields = [
            "id",
            "created_at",
            "outcome",
            # False until KHEOPS accepted the launch's code: the rest is only what the launch
            # URL claimed (anyone can forge one).
            "verified",
            "failure_detail",
            "kheops_server",
            "provider",
            "client_id",
            "album_id",
            "study_uids",
            "user",
            "remote_addr",
            "launch_id",
            "expires_at",
            "writes",
        ]
        read_only_fields = fields
