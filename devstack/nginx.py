"""The deployment's nginx in front of our app on this machine, for the tests and the bench.

Its configuration is made by deploy/nginx/render.sh, as in the image: what the HTTPS server
does (kheops-ohif-server.conf) and the relay offload (kheops-relay-*.conf) are the
deployment's own files. Only the main file is this module's: plain HTTP on a free loopback
port, and a directory of its own (pid, temporary files, cache, log) instead of the image's
paths. The directory (which holds the offload key) is readable by this user alone and
removed at `stop`.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devstack.processes import REPO, ServerProcess, StackError, free_port

RENDER = REPO / "deploy" / "nginx" / "render.sh"
# render.sh's default NGINX_MODULES_DIR, where Debian's libnginx-mod-http-lua puts it.
LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")


def nginx_installed() -> bool:
    return shutil.which("nginx") is not None


@dataclass
class NginxFront:
    """nginx on `url`, in front of the app at `app_url`."""

    server: ServerProcess
    workdir: Path
    url: str

    @classmethod
    def start(
        cls,
        app_url: str,
        *,
        offload_kheops: list[str] = (),  # type: ignore[assignment]
        offload_key: str = "",
        workers: int = 1,
        access_log: bool = False,
        base_path: str = "",
    ) -> NginxFront:
        """Start it (not waiting: see `wait_until_up`); `offload_kheops`, the KHEOPS origins
        whose relayed reads it carries with `offload_key` (the app's
        DICOMWEB_RELAY_OFFLOAD_KEY); with `base_path` ("/ohif"), serving the app under that
        sub-path, as PUBLIC_BASE_URL's path makes the deployment's nginx do."""
        if not nginx_installed():
            raise StackError("nginx is not installed (make test installs Debian's nginx-light)")
        if offload_kheops and not LUA_MODULE.exists():
            raise StackError(
                f"{LUA_MODULE} is missing: the relay offload's memory needs Debian's "
                "libnginx-mod-http-lua (make test installs it)"
            )
        workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-nginx-"))
        port = free_port()
        url = f"http://127.0.0.1:{port}{base_path}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PUBLIC_BASE_URL": url,
            "UPSTREAMS": urlsplit(app_url).netloc,
            "RELAY_OFFLOAD_KHEOPS": " ".join(offload_kheops),
            "RELAY_OFFLOAD_KEY": offload_key,
        }
        rendered = subprocess.run(  # noqa: S603 - our own script
            ["/bin/sh", str(RENDER), str(workdir)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if rendered.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise StackError(f"deploy/nginx/render.sh failed:\n{rendered.stderr}")
        access = (
            f"access_log {workdir}/access.log kheops_ohif;" if access_log else "access_log off;"
        )
        # Its workers as this user (root's would be nobody's, who cannot enter the directory).
        user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
        main = workdir / "front.conf"
        with open(os.open(main, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write(f"""# Made by devstack/nginx.py: deploy/nginx's server and relay offload on loopback.
{user}worker_processes {workers};
pid {workdir}/nginx.pid;
error_log stderr warn;
include kheops-relay-modules.conf;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    server_tokens off;
    log_format kheops_ohif '$request_method $uri $status $body_bytes_sent upstream=$upstream_addr';
    {access}
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    proxy_cache_path {workdir}/cache levels=1:2 keys_zone=kheops_documents:1m max_size=10m;
    upstream kheops_ohif {{
        server {urlsplit(app_url).netloc};
        keepalive 32;
        keepalive_timeout 4s;
    }}
    include kheops-relay-http.conf;
    server {{
        listen 127.0.0.1:{port};
        include kheops-ohif-server.conf;
    }}
}}
""")
        server = ServerProcess.start(
            "nginx",
            ["nginx", "-p", str(workdir), "-c", str(main), "-g", "daemon off;"],
            url=url,
            env={"PATH": env["PATH"]},
            log=workdir / "nginx.log",
        )
        return cls(server=server, workdir=workdir, url=url)

    def wait_until_up(self) -> None:
        self.server.wait_until_up("/healthz")

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
