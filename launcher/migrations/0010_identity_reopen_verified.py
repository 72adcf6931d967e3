from django.db import migrations, models


def success_is_verified(apps, schema_editor):
    # A launch that succeeded before this migration was accepted by KHEOPS.
    LaunchRecord = apps.get_model("launcher", "LaunchRecord")
    LaunchRecord.objects.filter(outcome="success").update(verified=True)


class Migration(migrations.Migration):
    dependencies = [("launcher", "0009_provider_white_label")]

    operations = [
        migrations.AddField(
            model_name="usedcode",
            name="launch_id",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name="launchgrant",
            name="album_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="launchgrant",
            name="user_email",
            field=models.CharField(blank=True, max_length=255),
        ),
        migrations.AddField(
            model_name="launchgrant",
            name="launcher_key_hash",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="launchrecord",
            name="verified",
            field=models.BooleanField(
                default=False,
                help_text="KHEOPS accepted the launch's code: the record's details are genuine.",
                verbose_name="verified by KHEOPS",
            ),
        ),
        migrations.AlterField(
            model_name="launchrecord",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("success", "Viewer opened"),
                    ("pending", "Accepted, viewer not loaded (yet)"),
                    ("bad_request", "Refused: invalid launch link"),
                    ("unknown_provider", "Refused: unknown provider"),
                    ("provider_disabled", "Refused: provider disabled"),
                    ("untrusted_server", "Refused: KHEOPS server not trusted"),
                    ("replay", "Refused: link already used (replay)"),
                    ("reopened", "Link used again by the same browser: sent to its viewer"),
                    ("code_rejected", "Failed: KHEOPS refused the code"),
                    ("kheops_unavailable", "Failed: KHEOPS unavailable"),
                    ("kheops_timeout", "Failed: KHEOPS did not answer in time"),
                    ("kheops_malformed", "Failed: KHEOPS's answer not understood"),
                ],
                db_index=True,
                max_length=32,
                verbose_name="outcome",
            ),
        ),
        migrations.RunPython(success_is_verified, migrations.RunPython.noop),
    ]
