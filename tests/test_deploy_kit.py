"""The deployment kit (README, "Deploy"): the Kubernetes manifests against the Kubernetes API
schemas, and what the image, the compose stack and nginx must do, read from their files.

`make test-deploy` (deploy/test/run.py) builds and runs the image and the compose stack; this
runs in `make test`, without podman. The manifests are rendered as kustomize renders this
kustomization (its resources, its image names), and validated offline with
kubernetes-validate, which bundles the schemas of each Kubernetes version.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes still in wide use, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def render(directory: Path) -> list[dict[str, Any]]:
    """The manifests `kubectl kustomize directory` gives for this kustomization: its resources
    in order, with its `images` applied. Anything else in it fails here: teach this first."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images"}, kustomization
    images = {
        image["name"]: f"{image.get('newName', image['name'])}:{image['newTag']}"
        for image in kustomization.get("images", [])
    }
    manifests = []
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((directory / resource).read_text()):
            for container in _containers(document):
                container["image"] = images.get(container["image"], container["image"])
            manifests.append(document)
    return manifests


def _containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {manifest["kind"]: manifest for manifest in render(KUBERNETES)}


def test_the_kustomization_lists_every_manifest_of_its_directory() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(path.name for path in KUBERNETES.glob("*.yaml"))

    assert sorted([*listed, "kustomization.yaml"]) == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    manifests: dict[str, dict[str, Any]], version: str
) -> None:
    assert set(manifests) == {
        "ConfigMap", "Secret", "Deployment", "Job", "Service", "Ingress",
        "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    for manifest in manifests.values():
        # strict: a misspelt or misplaced field is an error, not silently ignored.
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_does_refuse_a_broken_manifest(manifests: dict[str, dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_deployment_probes_the_app_as_its_public_host(
    manifests: dict[str, dict[str, Any]],
) -> None:
    deployment = manifests["Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    public_host = urlsplit(manifests["ConfigMap"]["data"]["PUBLIC_BASE_URL"]).hostname

    assert deployment["spec"]["replicas"] >= 2
    assert container["image"] == "registry.example.org/kheops-ohif:latest"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        # Django answers only its ALLOWED_HOSTS (the public host): a probe by pod IP gets 400.
        assert container[probe]["httpGet"]["httpHeaders"] == [
            {"name": "Host", "value": public_host}
        ]
    # Longer than the drain (SHUTDOWN_DRAIN_SECONDS) plus uvicorn's own graceful stop.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 60
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_service_pdb_and_hpa_point_at_the_deployments_pods(
    manifests: dict[str, dict[str, Any]],
) -> None:
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: all(pod_labels.get(k) == v for k, v in selector.items())  # noqa: E731

    assert selects(manifests["Service"]["spec"]["selector"])
    assert selects(manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert not selects(manifests["Job"]["spec"]["template"]["metadata"]["labels"])
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        manifests["Deployment"]["metadata"]["name"],
    )
    # A voluntary disruption always leaves a pod serving.
    hpa_min = manifests["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa_min
    backend = manifests["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == manifests["Service"]["metadata"]["name"]


def test_the_migration_job_and_the_servers_read_the_same_settings_and_secrets(
    manifests: dict[str, dict[str, Any]],
) -> None:
    [job] = manifests["Job"]["spec"]["template"]["spec"]["containers"]
    [server] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    config = manifests["ConfigMap"]["data"]
    secret_keys = set(manifests["Secret"]["stringData"])

    assert job["args"] == ["migrate"] and server["args"] == ["serve"]
    assert job["envFrom"] == server["envFrom"] == [{"configMapRef": {"name": "kheops-ohif"}}]
    files = {v for k, v in config.items() if k.endswith("_FILE")}
    assert {f"/run/secrets/kheops-ohif/{key}" for key in secret_keys} == files
    assert not any(k in config for k in ("SECRET_KEY", "SEALING_KEY", "METRICS_TOKEN"))
    assert urlsplit(config["DATABASE_URL"]).password is None  # it is in the Secret
    assert config["TRUSTED_PROXY_COUNT"] == "1" and config["TRUST_X_FORWARDED_PROTO"] == "true"


# --- the compose stack and nginx ------------------------------------------------------------------

COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
NGINX_TEMPLATE = (REPO / "deploy" / "nginx" / "nginx.conf.template").read_text()


def test_compose_runs_two_alike_replicas_behind_nginx_and_a_one_shot_migration() -> None:
    services = COMPOSE["services"]
    app_1, app_2, migrate = services["app-1"], services["app-2"], services["migrate"]

    assert app_1["environment"] == app_2["environment"] == migrate["environment"]
    assert app_1["image"] == app_2["image"] == migrate["image"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert services["nginx"]["environment"]["UPSTREAMS"].split() == ["app-1:8000", "app-2:8000"]
    environment = app_1["environment"]
    assert environment["TRUSTED_PROXY_COUNT"] == "1"
    assert environment["TRUST_X_FORWARDED_PROTO"] == "true"
    # Secrets from files of the `secrets` volume, never in the environment itself.
    assert not any(k in environment for k in ("SECRET_KEY", "SEALING_KEY", "DATABASE_PASSWORD"))
    for name, value in environment.items():
        if name.endswith("_FILE"):
            assert value.startswith("/run/secrets/kheops-ohif/"), name
    # Only nginx is published.
    assert [name for name, service in services.items() if "ports" in service] == ["nginx"]


def rendered_nginx_conf(base_path: str) -> str:
    """The template as deploy/nginx/entrypoint.sh fills it (envsubst of these names only)."""
    values = {
        "PUBLIC_ORIGIN": "https://viewer.example.org",
        "BASE_PATH": base_path,
        "PASS_ROOT": "/" if base_path else "",
        "PASS_LAUNCHES": "/launches/" if base_path else "",
        "UPSTREAM_SERVERS": "    server app-1:8000;\n    server app-2:8000;\n",
        "TLS_CERT": "/etc/nginx/tls/tls.crt",
        "TLS_KEY": "/etc/nginx/tls/tls.key",
    }
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: values[m.group(1)], NGINX_TEMPLATE)


def test_the_nginx_template_names_only_what_its_entrypoint_fills_in() -> None:
    entrypoint = (REPO / "deploy" / "nginx" / "entrypoint.sh").read_text()
    [names] = re.findall(r"envsubst '([^']*)'", entrypoint)

    assert set(re.findall(r"\$\{[A-Z_]+\}", NGINX_TEMPLATE)) == set(names.split())


@pytest.mark.parametrize("base_path", ["", "/ohif"])
def test_nginx_passes_the_forwarded_headers_and_its_request_id(base_path: str) -> None:
    conf = rendered_nginx_conf(base_path)

    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    assert "proxy_set_header X-Request-ID $request_id;" in conf
    # Retried on the other replica only when idempotent: nginx's default, not widened.
    assert "non_idempotent" not in conf
    # The access log never writes a query string (a launch URL's code).
    [log_format] = re.findall(r"log_format kheops_ohif (.*?);", conf, re.S)
    assert "$request " not in log_format and "$args" not in log_format
    assert "$request_uri" not in log_format and "$path_only" in log_format
    assert f"location {base_path}/launches/" in conf
    assert f"location = {base_path}/jwks.json" in conf
    assert f"location = {base_path}/metrics" in conf
    # The documents are cached; the viewer pages and the relay are streamed.
    assert conf.count("proxy_cache kheops_documents;") == 3
    launches = conf.split(f"location {base_path}/launches/", 1)[1].split("}", 1)[0]
    assert "proxy_buffering off;" in launches and "proxy_request_buffering off;" in launches


def test_with_a_sub_path_nginx_strips_the_prefix_without_it_passes_the_uri_as_is() -> None:
    assert "location /ohif/ {\n            proxy_pass http://kheops_ohif/;" in rendered_nginx_conf(
        "/ohif"
    )
    assert "location / {\n            proxy_pass http://kheops_ohif;" in rendered_nginx_conf("")


# --- the image ------------------------------------------------------------------------------------

CONTAINERFILE = (REPO / "Containerfile").read_text()
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"


def test_the_image_runs_unprivileged_with_a_healthcheck_and_a_migrate_command() -> None:
    final_stage = CONTAINERFILE.rsplit("\nFROM ", 1)[1]

    assert re.search(r"^USER 10001:10001$", final_stage, re.M)
    assert 'CMD ["kheops-ohif", "healthcheck"]' in final_stage
    assert 'CMD ["serve"]' in final_stage
    # Build tools stay in the build stage.
    assert "python3-venv" not in final_stage and "pip install" not in final_stage
    # The CA bundle is a build secret, mounted for the steps that download, never copied.
    assert CONTAINERFILE.count("--mount=type=secret,id=ca") == 2
    assert "ca-certificates.crt" not in CONTAINERFILE.split("\nARG BASE_IMAGE", 1)[1]
    # The place where issue 18's compiled catalogues go.
    assert "compilemessages" in CONTAINERFILE


def test_the_image_entrypoint_serves_as_the_readme_says() -> None:
    text = ENTRYPOINT.read_text()
    [serve] = re.findall(r"exec uvicorn (.*?)\"\$@\"", text, re.S)

    assert "kheops_ohif.asgi:application" in serve
    assert "--no-proxy-headers" in serve
    assert "--timeout-graceful-shutdown 30" in serve
    assert "exec python manage.py migrate --noinput" in text


def test_the_image_entrypoint_is_valid_posix_shell() -> None:
    for script in (ENTRYPOINT, REPO / "deploy" / "nginx" / "entrypoint.sh"):
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_init_secrets_makes_each_missing_secret_once(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (tmp_path / "bin").mkdir()
    # The image's `python` is the virtualenv's; here, this interpreter.
    (tmp_path / "bin" / "python").symlink_to(Path(__import__("sys").executable))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SECRETS_OWNER": f"{_ids()}"}
    secrets.mkdir()
    (secrets / "secret_key").write_text("kept\n")

    first = subprocess.run(
        ["sh", str(ENTRYPOINT), "init-secrets", str(secrets)],
        env=env,
        capture_output=True,
        text=True,
    )
    made = {path.name: path.read_text() for path in secrets.iterdir()}
    again = subprocess.run(
        ["sh", str(ENTRYPOINT), "init-secrets", str(secrets)],
        env=env,
        capture_output=True,
        text=True,
    )

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert set(made) == {"secret_key", "sealing_key", "metrics_token", "db_password"}
    assert made["secret_key"] == "kept\n"
    assert all(len(value.strip()) >= 50 for name, value in made.items() if name != "secret_key")
    assert {path.name: path.read_text() for path in secrets.iterdir()} == made
    assert (secrets / "sealing_key").stat().st_mode & 0o777 == 0o400
    assert (secrets / "db_password").stat().st_mode & 0o777 == 0o444


def _ids() -> str:
    import os

    return f"{os.getuid()}:{os.getgid()}"


# --- settings the image relies on -----------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "variable"])
def test_the_database_password_apart_from_the_url_replaces_the_urls(
    tmp_path: Path, source: str
) -> None:
    from tests.test_settings_and_health import STRONG_KEY, run_django

    password_file = tmp_path / "db_password"
    password_file.write_text("from-the-secret\n")
    given = (
        {"DATABASE_PASSWORD_FILE": str(password_file)}
        if source == "file"
        else {"DATABASE_PASSWORD": "from-the-secret"}
    )
    code = "from django.conf import settings as s; print(s.DATABASES['default']['PASSWORD'])"

    result = run_django(
        ["shell", "-c", code],
        SECRET_KEY=STRONG_KEY,
        DATABASE_URL="postgres://kheops_ohif:in-the-url@db.internal:5432/kheops_ohif",
        **given,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "from-the-secret"


def test_a_database_password_file_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    from tests.test_settings_and_health import STRONG_KEY, run_django

    result = run_django(
        ["check"],
        SECRET_KEY=STRONG_KEY,
        DATABASE_PASSWORD_FILE=str(tmp_path / "missing"),
    )

    assert result.returncode != 0
    assert "DATABASE_PASSWORD_FILE" in result.stderr and "cannot be read" in result.stderr
