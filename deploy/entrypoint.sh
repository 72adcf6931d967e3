#!/bin/sh
# The image's entry point (/usr/local/bin/kheops-ohif): one command a line of work.
#   serve            (default) the production server: uvicorn, $WEB_CONCURRENCY workers on $PORT
#   migrate          wait for the database (at most $DATABASE_WAIT_SECONDS), then migrate: run
#                    it once per release, before or while the new servers start
#   init-secrets DIR make the secrets that are missing in DIR (compose's first start)
#   healthcheck      GET /healthz on this container (the image's HEALTHCHECK)
#   manage ARGS...   python manage.py ARGS... (trust_kheops, createsuperuser, rotate_signing_key…)
#   anything else    run as given
# Secrets named by *_FILE variables are waited for (at most $SECRETS_WAIT_SECONDS): a secret
# written by another container at first start may not be there yet.
set -eu

wait_for_secret_files() {
  deadline=$(( $(date +%s) + ${SECRETS_WAIT_SECONDS:-60} ))
  for name in $(env | sed -n 's/^\([A-Z0-9_]*_FILE\)=.*/\1/p'); do
    path=$(printenv "$name")
    while [ ! -s "$path" ]; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "kheops-ohif: $name names $path, which does not exist (or is empty)" >&2
        exit 1
      fi
      sleep 0.5
    done
  done
}

command="${1:-serve}"
[ $# -gt 0 ] && shift
# prometheus-client's multiprocess mode is the server's (several workers); a one-off command is
# one process, whose values nobody scrapes.
[ "$command" = serve ] || unset PROMETHEUS_MULTIPROC_DIR
case "$command" in
  serve)
    wait_for_secret_files
    # prometheus-client's multiprocess mode: the directory must be empty when the server starts.
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
      rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    fi
    # --no-proxy-headers: the client's address and scheme are ours to decide from
    # TRUSTED_PROXY_COUNT and TRUST_X_FORWARDED_PROTO (launcher.clientaddr), never uvicorn's.
    # --http: uvicorn's parser, refusing a request head over 64 KiB (431; launcher.httpserver).
    exec uvicorn kheops_ohif.asgi:application --host 0.0.0.0 --port "${PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" --timeout-graceful-shutdown 30 --no-proxy-headers \
      --http launcher.httpserver:HttpToolsProtocol "$@"
    ;;
  migrate)
    wait_for_secret_files
    # One process, one connection: no pool, whose timeout would cut a slow first connection.
    export DATABASE_POOL=false
    python - <<'PY'
import os
import time

import django

django.setup()
from django.db import connection  # noqa: E402

deadline = time.monotonic() + float(os.environ.get("DATABASE_WAIT_SECONDS", "60"))
while True:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            raise SystemExit(f"kheops-ohif: the database does not answer: {type(exc).__name__}")
        time.sleep(1)
PY
    exec python manage.py migrate --noinput "$@"
    ;;
  init-secrets)
    dir="${1:?init-secrets DIR}"
    mkdir -p "$dir"
    for name in secret_key sealing_key metrics_token db_password relay_offload_key; do
      [ -s "$dir/$name" ] && continue
      python -c 'import secrets; print(secrets.token_urlsafe(50))' >"$dir/.$name.new"
      # The database password is read by the database's container too (another user).
      if [ "$name" = db_password ]; then mode=0444; else mode=0400; fi
      chmod "$mode" "$dir/.$name.new"
      chown "${SECRETS_OWNER:-10001:10001}" "$dir/.$name.new" 2>/dev/null || true
      mv -n "$dir/.$name.new" "$dir/$name" && rm -f "$dir/.$name.new"
      echo "kheops-ohif: made $dir/$name"
    done
    ;;
  healthcheck)
    exec python - <<'PY'
import os
import sys
import urllib.request
from urllib.parse import urlsplit

# Django answers only the host names it serves: ask as the public URL's host does.
host = urlsplit(os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000")).netloc
request = urllib.request.Request(
    f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz", headers={"Host": host}
)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    sys.exit(0 if opener.open(request, timeout=2).status == 200 else 1)
except OSError as exc:
    sys.exit(f"unhealthy: {exc}")
PY
    ;;
  manage)
    wait_for_secret_files
    exec python manage.py "$@"
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
