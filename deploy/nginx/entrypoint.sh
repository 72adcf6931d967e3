#!/bin/sh
# nginx's configuration from the environment, and a TLS certificate when none is mounted.
#   PUBLIC_BASE_URL  https://host[:port][/sub-path], as the app's (its path: the sub-path served)
#   UPSTREAMS        the app replicas, "host:port host:port" (default: app-1:8000 app-2:8000)
#   TLS_CERT, TLS_KEY  a real certificate (PEM, full chain) and its key, mounted read-only
#                    (default /etc/nginx/tls/tls.crt and tls.key). When they are absent, a
#                    self-signed one for the public host name is made once into
#                    /var/lib/nginx-tls (a volume: kept across restarts), for local trials.
set -eu
url="${PUBLIC_BASE_URL:?PUBLIC_BASE_URL is required (https://host[:port][/path])}"
authority="${url#*://}"
path=""
case "$authority" in */*) path="/${authority#*/}"; authority="${authority%%/*}" ;; esac
BASE_PATH="${path%/}"
host="${authority%:*}"
case "$host" in \[*) host="${authority%%]*}]"; host="${host#[}"; host="${host%]}" ;; esac
# With a sub-path the prefix is stripped before the request is passed on (the app adds it back
# to every URL it makes); without, the URI goes on exactly as received.
if [ -n "$BASE_PATH" ]; then PASS_ROOT=/; PASS_LAUNCHES=/launches/; else PASS_ROOT=; PASS_LAUNCHES=; fi
UPSTREAM_SERVERS=""
for server in ${UPSTREAMS:-app-1:8000 app-2:8000}; do
  UPSTREAM_SERVERS="$UPSTREAM_SERVERS    server $server max_fails=1 fail_timeout=10s;
"
done
TLS_CERT="${TLS_CERT:-/etc/nginx/tls/tls.crt}"
TLS_KEY="${TLS_KEY:-/etc/nginx/tls/tls.key}"
if [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ]; then
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
PUBLIC_ORIGIN="https://$authority"
export PUBLIC_ORIGIN BASE_PATH PASS_ROOT PASS_LAUNCHES UPSTREAM_SERVERS TLS_CERT TLS_KEY
# shellcheck disable=SC2016 # the names envsubst replaces, nginx's own $variables untouched
envsubst '${PUBLIC_ORIGIN} ${BASE_PATH} ${PASS_ROOT} ${PASS_LAUNCHES} ${UPSTREAM_SERVERS} ${TLS_CERT} ${TLS_KEY}' \
  </etc/nginx/kheops-ohif.conf.template >/etc/nginx/nginx.conf
nginx -t -q
exec "$@"
