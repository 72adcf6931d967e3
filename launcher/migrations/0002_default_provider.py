from django.db import migrations


def create_default_provider(apps, schema_editor):
    Provider = apps.get_model("launcher", "Provider")
    if not Provider.objects.filter(is_default=True).exists():
        Provider.objects.get_or_create(
            slug="ohif",
            defaults={"client_name": "OHIF Viewer", "mode": "viewer", "is_default": True},
        )


class Migration(migrations.Migration):
    dependencies = [("launcher", "0001_initial")]
    operations = [migrations.RunPython(create_default_provider, migrations.RunPython.noop)]
