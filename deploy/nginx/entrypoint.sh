#!/bin/sh
# nginx's configuration from the environment (render.sh says which variables), and a TLS
# certificate when none is mounted.
#   TLS_CERT, TLS_KEY  a real certificate (PEM, full chain) and its key, mounted read-only
#                    (default /etc/nginx/tls/tls.crt and tls.key). When they are absent, a
#                    self-signed one for the public host name is made once into
#                    /var/lib/nginx-tls (a volume: kept across restarts), for local trials.
#   RELAY_OFFLOAD_KEY_FILE  with RELAY_OFFLOAD_KHEOPS: waited for up to SECRETS_WAIT_SECONDS
#                    (60), as compose's `secrets` service makes it at first start.
#   LISTEN_HTTP      plain HTTP on this port behind a proxy that ends TLS: no certificate then.
#   NGINX_CONF_DIR   where the configuration is made (default /etc/nginx; a writable
#                    directory of its own when the root file system is read-only, as in
#                    deploy/kubernetes, which then holds the pid file too); `nginx` is then
#                    started with it.
set -eu
conf="${NGINX_CONF_DIR:-/etc/nginx}"
if [ -n "${NGINX_CONF_DIR:-}" ]; then
  PID_FILE="${PID_FILE:-$conf/nginx.pid}"
  export PID_FILE
fi
url="${PUBLIC_BASE_URL:?PUBLIC_BASE_URL is required (https://host[:port][/path])}"
authority="${url#*://}"
authority="${authority%%/*}"
host="${authority%:*}"
case "$host" in \[*) host="${authority%%]*}]"; host="${host#[}"; host="${host%]}" ;; esac
TLS_CERT="${TLS_CERT:-/etc/nginx/tls/tls.crt}"
TLS_KEY="${TLS_KEY:-/etc/nginx/tls/tls.key}"
if [ -z "${LISTEN_HTTP:-}" ] && { [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ]; }; then
  TLS_CERT=/var/lib/nginx-tls/self-signed.crt
  TLS_KEY=/var/lib/nginx-tls/self-signed.key
  if [ ! -s "$TLS_CERT" ]; then
    mkdir -p /var/lib/nginx-tls
    case "$host" in
      *[!0-9.]*) san="DNS:$host" ;;
      *) san="IP:$host" ;;
    esac
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$host" \
      -addext "subjectAltName=$san" -addext "extendedKeyUsage=serverAuth" \
      -keyout "$TLS_KEY.new" -out "$TLS_CERT.new" 2>/dev/null
    chmod 600 "$TLS_KEY.new"
    mv "$TLS_KEY.new" "$TLS_KEY" && mv "$TLS_CERT.new" "$TLS_CERT"
    echo "nginx-entrypoint: made a self-signed certificate for $host ($TLS_CERT); mount a real one for production" >&2
  fi
fi
if [ -n "${RELAY_OFFLOAD_KHEOPS:-}" ] && [ -z "${RELAY_OFFLOAD_KEY:-}" ] && [ -n "${RELAY_OFFLOAD_KEY_FILE:-}" ]; then
  waited=0
  until [ -s "$RELAY_OFFLOAD_KEY_FILE" ]; do
    if [ "$waited" -ge "${SECRETS_WAIT_SECONDS:-60}" ]; then
      echo "nginx-entrypoint: $RELAY_OFFLOAD_KEY_FILE never appeared" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
fi
export TLS_CERT TLS_KEY
/usr/local/share/kheops-ohif-nginx/render.sh "$conf"
nginx -t -q -c "$conf/nginx.conf"
if [ "$1" = nginx ]; then
  shift
  set -- nginx -c "$conf/nginx.conf" "$@"
fi
exec "$@"
