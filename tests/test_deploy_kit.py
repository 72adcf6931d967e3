"""The deployment kit (README, "Deploy"): the Kubernetes manifests against the Kubernetes API
schemas, and what the image, the compose stack and nginx must do, read from their files.

`make test-deploy` (deploy/test/run.py) builds and runs the image and the compose stack; this
runs in `make test`, without podman. The manifests are rendered as kustomize renders this
kustomization (its resources, its image names), and validated offline with
kubernetes-validate, which bundles the schemas of each Kubernetes version.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
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
    container = container_named(deployment, "kheops-ohif")
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
    server = container_named(manifests["Deployment"], "kheops-ohif")
    config = manifests["ConfigMap"]["data"]
    secret_keys = set(manifests["Secret"]["stringData"])

    assert job["args"] == ["migrate"] and server["args"] == ["serve"]
    assert job["envFrom"] == server["envFrom"] == [{"configMapRef": {"name": "kheops-ohif"}}]
    files = {v for k, v in config.items() if k.endswith("_FILE")}
    assert {f"/run/secrets/kheops-ohif/{key}" for key in secret_keys} == files
    assert not any(k in config for k in ("SECRET_KEY", "SEALING_KEY", "METRICS_TOKEN"))
    assert urlsplit(config["DATABASE_URL"]).password is None  # it is in the Secret
    # The ingress, then the pod's nginx.
    assert config["TRUSTED_PROXY_COUNT"] == "2" and config["TRUST_X_FORWARDED_PROTO"] == "true"


def container_named(workload: dict[str, Any], name: str) -> dict[str, Any]:
    [container] = [c for c in _containers(workload) if c["name"] == name]
    return container


def test_in_each_pod_nginx_takes_the_requests_and_carries_the_relayed_reads(
    manifests: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    deployment = manifests["Deployment"]
    nginx = container_named(deployment, "nginx")
    app = container_named(deployment, "kheops-ohif")
    config = manifests["ConfigMap"]["data"]
    env = {
        e["name"]: e.get("value") or e["valueFrom"]["configMapKeyRef"]["key"] for e in nginx["env"]
    }
    [nginx_port] = nginx["ports"]
    [app_port] = app["ports"]

    assert nginx["image"] == "registry.example.org/kheops-ohif-nginx:latest"
    # The Service (and so the ingress) reaches nginx; nginx reaches the app in its pod.
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == nginx_port["name"]
    assert env["LISTEN_HTTP"] == str(nginx_port["containerPort"])
    assert env["UPSTREAMS"] == f"127.0.0.1:{app_port['containerPort']}"
    # The same key file on both sides, from the Secret both mount.
    assert env["RELAY_OFFLOAD_KEY_FILE"] == "DICOMWEB_RELAY_OFFLOAD_KEY_FILE"
    assert config["DICOMWEB_RELAY_OFFLOAD_KEY_FILE"].startswith(
        next(m["mountPath"] for m in nginx["volumeMounts"] if m["name"] == "secrets")
    )
    assert env["RELAY_OFFLOAD_KHEOPS"] == "RELAY_OFFLOAD_KHEOPS" and env["PUBLIC_BASE_URL"]
    # Read-only, unprivileged; what it writes is in volumes of its own, its configuration too.
    assert nginx["securityContext"]["readOnlyRootFilesystem"] is True
    assert nginx["securityContext"]["capabilities"]["drop"] == ["ALL"]
    written = {m["mountPath"] for m in nginx["volumeMounts"] if not m.get("readOnly")}
    assert written == {"/run/nginx", "/var/cache/nginx", "/var/lib/nginx", "/var/log/nginx"}
    assert env["NGINX_CONF_DIR"] == "/run/nginx"
    # What the image makes of this environment is valid nginx.
    conf = rendered_nginx_conf("", tmp_path, LISTEN_HTTP=env["LISTEN_HTTP"])
    assert f"listen {env['LISTEN_HTTP']};" in conf
    assert nginx["readinessProbe"]["httpGet"]["path"] == "/nginx-healthz"


# --- the compose stack and nginx ------------------------------------------------------------------

COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
NGINX = REPO / "deploy" / "nginx"


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


def test_no_environment_value_has_an_empty_default_podman_compose_would_leave_in_place() -> None:
    """podman-compose 1.0 substitutes `${X:-default}` only when the default is not empty: an
    empty one (`${X:-}`) reaches the container as that very text."""
    raw = (REPO / "deploy" / "compose.yaml").read_text()
    environment = raw.split("\nservices:", 1)[0] + "".join(
        re.findall(r"\n    environment:\n((?:      .*\n)+)", raw)
    )

    assert re.findall(r"\$\{[A-Z_]+:?-\}", environment) == []


def render_nginx(out: Path, base_path: str = "", **env: str) -> subprocess.CompletedProcess:
    """deploy/nginx/render.sh, as nginx's entrypoint runs it, into `out`."""
    return subprocess.run(
        ["sh", str(NGINX / "render.sh"), str(out)],
        env={
            "PATH": os.environ["PATH"],
            "PUBLIC_BASE_URL": f"https://viewer.example.org{base_path}",
            "UPSTREAMS": "app-1:8000 app-2:8000",
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )


def rendered_nginx_conf(base_path: str, tmp_path: Path, **env: str) -> str:
    """The main file, its servers and what they do, as nginx's entrypoint makes them."""
    out = tmp_path / f"nginx{base_path.replace('/', '-')}"
    rendered = render_nginx(out, base_path, **env)
    assert rendered.returncode == 0, rendered.stderr
    files = ("nginx.conf", "kheops-ohif-servers.conf", "kheops-ohif-server.conf")
    return "".join((out / name).read_text() for name in files)


def test_each_nginx_template_names_only_what_render_sh_fills_in() -> None:
    script = (NGINX / "render.sh").read_text()
    calls = {
        template: names
        for names, template in re.findall(
            r"envsubst '([^']*)' \\\n\s*<\"\$templates/([^\"]+)\"", script
        )
    }

    assert set(calls) == {
        "nginx.conf.template",
        "$servers_template",
        "server.conf.template",
        "relay-location.conf.template",
    }
    named = {
        template: set(re.findall(r"\$\{[A-Z_]+\}", (NGINX / template).read_text()))
        for template in (*calls, "servers-tls.conf.template", "servers-plain.conf.template")
        if template != "$servers_template"
    }
    for template, names in calls.items():
        if template == "$servers_template":  # either one, as LISTEN_HTTP says
            both = named["servers-tls.conf.template"] | named["servers-plain.conf.template"]
            assert both == set(names.split())
        else:
            assert named[template] == set(names.split()), template


@pytest.mark.parametrize("base_path", ["", "/ohif"])
def test_nginx_passes_the_forwarded_headers_and_its_request_id(
    base_path: str, tmp_path: Path
) -> None:
    conf = rendered_nginx_conf(base_path, tmp_path)

    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "set $kheops_forwarded_proto $scheme;" in conf
    assert "proxy_set_header X-Forwarded-Proto $kheops_forwarded_proto;" in conf
    assert "listen 443 ssl http2;" in conf
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


def test_behind_a_proxy_that_ends_tls_nginx_serves_plain_http_and_keeps_its_scheme(
    tmp_path: Path,
) -> None:
    conf = rendered_nginx_conf("/ohif", tmp_path, LISTEN_HTTP="8080")

    assert "listen 8080;" in conf and "ssl" not in conf and "listen 80;" not in conf
    # The scheme the browser used is the proxy's to say; nginx adds itself to the addresses.
    assert "set $kheops_forwarded_proto $http_x_forwarded_proto;" in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "location = /ohif/nginx-healthz {" in conf
    assert render_nginx(tmp_path / "bad", LISTEN_HTTP="80; evil").returncode == 1


def test_with_a_sub_path_nginx_strips_the_prefix_without_it_passes_the_uri_as_is(
    tmp_path: Path,
) -> None:
    assert "location /ohif/ {\n    proxy_pass http://kheops_ohif/;" in rendered_nginx_conf(
        "/ohif", tmp_path
    )
    assert "location / {\n    proxy_pass http://kheops_ohif;" in rendered_nginx_conf("", tmp_path)


def test_the_relay_offload_is_off_unless_nginx_is_given_kheops_origins(tmp_path: Path) -> None:
    rendered = render_nginx(tmp_path, RELAY_OFFLOAD_KEY="k" * 40)
    server = (tmp_path / "kheops-ohif-server.conf").read_text()

    assert rendered.returncode == 0, rendered.stderr
    # Empty values: nginx sends neither header, whatever the browser sent under those names.
    assert 'proxy_set_header X-Relay-Offload-Key "";' in server
    assert 'proxy_set_header X-Relay-Offload-Origins "";' in server
    assert "location /_kheops_relay/" not in (tmp_path / "kheops-relay-locations.conf").read_text()


def test_nginx_gets_an_internal_location_per_kheops_origin_it_can_reach(tmp_path: Path) -> None:
    key = "k" * 40
    (tmp_path / "key").write_text(key + "\n")
    rendered = render_nginx(
        tmp_path / "out",
        RELAY_OFFLOAD_KHEOPS="https://KHEOPS.example.invalid http://127.0.0.1:8042/ https://[::1]",
        RELAY_OFFLOAD_KEY_FILE=str(tmp_path / "key"),
    )
    out = tmp_path / "out"

    # An IPv6 literal is not an origin this script takes.
    assert rendered.returncode == 1 and "not an origin" in rendered.stderr
    # .invalid never resolves: left to the app, and said.
    rendered = render_nginx(
        out,
        RELAY_OFFLOAD_KHEOPS="https://KHEOPS.example.invalid http://127.0.0.1:8042/",
        RELAY_OFFLOAD_KEY_FILE=str(tmp_path / "key"),
    )
    server = (out / "kheops-ohif-server.conf").read_text()
    locations = (out / "kheops-relay-locations.conf").read_text()
    upstreams = (out / "kheops-relay-http.conf").read_text()
    assert rendered.returncode == 0, rendered.stderr
    assert "kheops.example.invalid does not resolve" in rendered.stderr
    assert f'proxy_set_header X-Relay-Offload-Key "{key}";' in server
    assert 'proxy_set_header X-Relay-Offload-Origins "http://127.0.0.1:8042";' in server
    assert "location /_kheops_relay/0/ {\n    proxy_pass http://kheops_relay_0/;" in locations
    assert 'proxy_set_header Host "127.0.0.1:8042";' in locations
    assert "location /_kheops_relay/1/" not in locations
    assert "upstream kheops_relay_0 {\n    server 127.0.0.1:8042;" in upstreams
    # The files that hold the key: this user's alone.
    assert stat.S_IMODE((out / "kheops-ohif-server.conf").stat().st_mode) == 0o600


@pytest.mark.parametrize("key", ["", "short", "k" * 31, "k" * 40 + '"; evil'], ids=repr)
def test_nginx_refuses_an_offload_key_that_is_missing_short_or_not_plain(
    tmp_path: Path, key: str
) -> None:
    rendered = render_nginx(
        tmp_path, RELAY_OFFLOAD_KHEOPS="http://127.0.0.1:8042", RELAY_OFFLOAD_KEY=key
    )

    assert rendered.returncode == 1
    assert "RELAY_OFFLOAD_KEY" in rendered.stderr


@pytest.mark.parametrize("listen_http", ["", "8080"], ids=["tls", "behind-a-tls-proxy"])
def test_the_rendered_production_configuration_is_valid_nginx(
    tmp_path: Path, listen_http: str
) -> None:
    """`nginx -t` on what the image's entrypoint makes (offload on), with only the paths that
    would touch this machine (pid, cache, TLS files) moved into the test's directory."""
    nginx = shutil.which("nginx")
    assert nginx, "nginx is missing: `make test` installs Debian's nginx-light"
    out = tmp_path / "conf"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=viewer.example.org", "-keyout", str(tmp_path / "tls.key"),
         "-out", str(tmp_path / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    rendered = render_nginx(
        out,
        UPSTREAMS="127.0.0.1:8000 127.0.0.1:8001",
        TLS_CERT=str(tmp_path / "tls.crt"),
        TLS_KEY=str(tmp_path / "tls.key"),
        RELAY_OFFLOAD_KHEOPS="https://127.0.0.1:8443 http://127.0.0.1:8042",
        RELAY_OFFLOAD_KEY="k" * 40,
        LISTEN_HTTP=listen_http,
    )
    assert rendered.returncode == 0, rendered.stderr
    main = (out / "nginx.conf").read_text()
    main = main.replace("pid /run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    main = main.replace("/var/cache/nginx/kheops-ohif", f"{tmp_path}/cache")
    (out / "nginx.conf").write_text(main)

    checked = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(out / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


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
    for script in (ENTRYPOINT, NGINX / "entrypoint.sh", NGINX / "render.sh"):
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
    assert set(made) == {
        "secret_key",
        "sealing_key",
        "metrics_token",
        "db_password",
        "relay_offload_key",
    }
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
