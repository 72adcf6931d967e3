#!/bin/sh
# nginx's configuration for kheops-ohif, from the environment, into the directory $1:
#   nginx.conf                   the main file
#   kheops-ohif-servers.conf     its servers: HTTPS on 443 and the redirect on 80, or plain
#                                HTTP on LISTEN_HTTP
#   kheops-ohif-server.conf      what the server does (proxying to the app replicas)
#   kheops-relay-http.conf       the relay offload's maps, and an upstream per KHEOPS origin
#   kheops-relay-locations.conf  its internal locations, one per KHEOPS origin
#   kheops-relay-location.conf   the body each of them includes
#   kheops-relay-modules.conf    the Lua module the offload's memory needs (main context)
#   kheops-relay-front.conf      the offload's memory, in front of the app (kheops_relay.lua)
#   kheops_relay.lua             its code
# The templates are read from this script's directory (TEMPLATES_DIR overrides).
#   PUBLIC_BASE_URL  https://host[:port][/sub-path], as the app's (its path: the sub-path served)
#   UPSTREAMS        the app replicas, "host:port host:port" (default: app-1:8000 app-2:8000)
#   TLS_CERT, TLS_KEY  the certificate and key nginx.conf names (deploy/nginx/entrypoint.sh)
#   PID_FILE         nginx's pid file (default /run/nginx.pid)
#   LISTEN_HTTP      a port: plain HTTP on it instead, behind a proxy of yours that ends TLS
#                    and sets X-Forwarded-Proto, which is passed on (deploy/kubernetes: the
#                    ingress controller, this nginx beside the app in each pod)
#   RELAY_OFFLOAD_KHEOPS  the KHEOPS origins nginx carries relayed reads from, e.g.
#                    "https://kheops.example.org" (space-separated; default none: the offload
#                    is off and the app carries every relayed read). docs/relay-offload.md.
#   RELAY_OFFLOAD_KEY_FILE (or RELAY_OFFLOAD_KEY)  the key the app also has, as its
#                    DICOMWEB_RELAY_OFFLOAD_KEY: 32 or more of A-Z a-z 0-9 _ -. Required with
#                    RELAY_OFFLOAD_KHEOPS.
#   RELAY_CA_FILE    the CAs KHEOPS's certificate is checked against (default: Debian's bundle)
#   RELAY_CONNECT_TIMEOUT  to connect to KHEOPS (default 5s, as the app's KHEOPS_HTTP_TIMEOUT)
#   NGINX_MODULES_DIR  where Debian's libnginx-mod-http-lua put its modules (default
#                    /usr/lib/nginx/modules)
set -euf  # -f: no file name expansion of the values
out="${1:?usage: render.sh OUTPUT_DIRECTORY}"
templates="${TEMPLATES_DIR:-$(cd "$(dirname "$0")" && pwd)}"
say() { echo "nginx-render: $*" >&2; }

url="${PUBLIC_BASE_URL:?PUBLIC_BASE_URL is required (https://host[:port][/path])}"
authority="${url#*://}"
path=""
case "$authority" in */*) path="/${authority#*/}"; authority="${authority%%/*}" ;; esac
BASE_PATH="${path%/}"
# With a sub-path the prefix is stripped before the request is passed on (the app adds it back
# to every URL it makes); without, the URI goes on exactly as received.
if [ -n "$BASE_PATH" ]; then PASS_ROOT=/; PASS_LAUNCHES=/launches/; else PASS_ROOT=; PASS_LAUNCHES=; fi
UPSTREAM_SERVERS=""
for server in ${UPSTREAMS:-app-1:8000 app-2:8000}; do
  UPSTREAM_SERVERS="$UPSTREAM_SERVERS    server $server max_fails=1 fail_timeout=10s;
"
done
PUBLIC_ORIGIN="https://$authority"
PID_FILE="${PID_FILE:-/run/nginx.pid}"
LISTEN_HTTP="${LISTEN_HTTP:-}"
if [ -n "$LISTEN_HTTP" ]; then
  case "$LISTEN_HTTP" in *[!0-9]*) say "LISTEN_HTTP is not a port number: $LISTEN_HTTP"; exit 1 ;; esac
  servers_template=servers-plain.conf.template
  FORWARDED_PROTO='$http_x_forwarded_proto'  # the scheme the proxy in front was asked with
else
  servers_template=servers-tls.conf.template
  FORWARDED_PROTO='$scheme'
fi
TLS_CERT="${TLS_CERT:-/etc/nginx/tls/tls.crt}"
TLS_KEY="${TLS_KEY:-/etc/nginx/tls/tls.key}"
RELAY_CA_FILE="${RELAY_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
RELAY_CONNECT_TIMEOUT="${RELAY_CONNECT_TIMEOUT:-5s}"

# The relay offload: an upstream and an internal location per KHEOPS origin it can reach.
RELAY_OFFLOAD_KEY="${RELAY_OFFLOAD_KEY:-}"
RELAY_OFFLOAD_ORIGINS=""
relay_http="$(cat "$templates/relay-http.conf")
"
relay_locations=""
# shellcheck disable=SC2086 # split on white space, nothing else (set -f)
RELAY_OFFLOAD_KHEOPS="$(echo ${RELAY_OFFLOAD_KHEOPS:-})"
if [ -n "$RELAY_OFFLOAD_KHEOPS" ]; then
  if [ -z "$RELAY_OFFLOAD_KEY" ] && [ -n "${RELAY_OFFLOAD_KEY_FILE:-}" ]; then
    RELAY_OFFLOAD_KEY="$(cat "$RELAY_OFFLOAD_KEY_FILE")"
  fi
  case "$RELAY_OFFLOAD_KEY" in
    *[!A-Za-z0-9_-]*|"") say "RELAY_OFFLOAD_KEY(_FILE) is missing or not made of A-Z a-z 0-9 _ -"; exit 1 ;;
  esac
  if [ "${#RELAY_OFFLOAD_KEY}" -lt 32 ]; then say "RELAY_OFFLOAD_KEY is shorter than 32 characters"; exit 1; fi
  index=0
  for origin in $RELAY_OFFLOAD_KHEOPS; do
    origin="$(printf '%s' "${origin%/}" | tr 'A-Z' 'a-z')"
    scheme="${origin%%://*}"
    host_port="${origin#*://}"
    case "$scheme" in https) port=443 ;; http) port=80 ;; *) say "not an http(s) origin: $origin"; exit 1 ;; esac
    case "$host_port" in
      *[!a-z0-9.:-]*|""|*:*:*) say "not an origin (https://host[:port]): $origin"; exit 1 ;;
      *:*) host="${host_port%:*}"; port="${host_port##*:}" ;;
      *) host="$host_port" ;;
    esac
    case "$port" in *[!0-9]*|"") say "not a port: $origin"; exit 1 ;; esac
    # nginx resolves the name once, as it starts: a name that does not resolve now would keep
    # nginx from starting at all. Its reads are left to the app instead, and said.
    if ! getent hosts "$host" >/dev/null 2>&1; then
      say "$host does not resolve: the app carries the relayed reads from $origin itself"
      continue
    fi
    relay_http="$relay_http
upstream kheops_relay_$index {
    server $host:$port;
    keepalive 32;
    keepalive_timeout 30s;
}
"
    relay_locations="$relay_locations
# KHEOPS at $origin
location /_kheops_relay/$index/ {
    proxy_pass $scheme://kheops_relay_$index/;
    proxy_set_header Host \"$host_port\";
    proxy_ssl_name $host;
    include kheops-relay-location.conf;
}
"
    RELAY_OFFLOAD_ORIGINS="${RELAY_OFFLOAD_ORIGINS:+$RELAY_OFFLOAD_ORIGINS }$origin"
    index=$((index + 1))
  done
fi
relay_modules=""
relay_front=""
if [ -z "$RELAY_OFFLOAD_ORIGINS" ]; then
  RELAY_OFFLOAD_KEY=""  # off: nothing to tell the app
else
  say "the relay offload carries reads from: $RELAY_OFFLOAD_ORIGINS"
  # Its memory of the app's hand-overs (kheops_relay.lua): Lua, in nginx's shared memory.
  modules="${NGINX_MODULES_DIR:-/usr/lib/nginx/modules}"
  relay_modules="load_module $modules/ndk_http_module.so;
load_module $modules/ngx_http_lua_module.so;
"
  relay_http="$relay_http
# The hand-overs nginx may remember (kheops_relay.lua): a few seconds each, never on disk.
lua_package_path \"$(mkdir -p "$out" && cd "$out" && pwd)/?.lua;;\";
lua_shared_dict kheops_relay_decisions 16m;
init_by_lua_block {
    require(\"kheops_relay\")
}
"
  relay_front="# The relay offload's memory (kheops_relay.lua): a read of a study the app handed over a
# moment ago for this browser is carried at once; anything else goes on to the app.
set \$relay_authorization \"\";
set \$relay_server_timing \"\";
set \$relay_content_security_policy \"\";
set \$relay_cross_origin_opener_policy \"\";
set \$relay_cross_origin_resource_policy \"\";
set \$relay_permissions_policy \"\";
set \$relay_referrer_policy \"\";
set \$relay_strict_transport_security \"\";
set \$relay_x_content_type_options \"\";
set \$relay_x_frame_options \"\";
access_by_lua_block {
    require(\"kheops_relay\").carry_kept(\"$BASE_PATH\")
}
"
fi
relay_locations="$relay_locations
# nginx's own failures to reach KHEOPS in a relay offload location, said as the app says them.
location @kheops_relay_unreachable {
    default_type application/json;
    add_header Cache-Control no-store always;
    add_header X-Content-Type-Options nosniff always;
    return 502 '{\"error\": \"KHEOPS could not be reached.\", \"advice\": \"\"}';
}
location @kheops_relay_timeout {
    default_type application/json;
    add_header Cache-Control no-store always;
    add_header X-Content-Type-Options nosniff always;
    return 504 '{\"error\": \"KHEOPS did not answer in time.\", \"advice\": \"\"}';
}
"

export PUBLIC_ORIGIN BASE_PATH PASS_ROOT PASS_LAUNCHES UPSTREAM_SERVERS TLS_CERT TLS_KEY \
  RELAY_OFFLOAD_KEY RELAY_OFFLOAD_ORIGINS RELAY_CA_FILE RELAY_CONNECT_TIMEOUT LISTEN_HTTP \
  FORWARDED_PROTO PID_FILE
mkdir -p "$out"
umask 077  # the server configuration holds the offload key
# shellcheck disable=SC2016 # the names envsubst replaces, nginx's own $variables untouched
envsubst '${UPSTREAM_SERVERS} ${PID_FILE}' \
  <"$templates/nginx.conf.template" >"$out/nginx.conf"
# shellcheck disable=SC2016
envsubst '${PUBLIC_ORIGIN} ${BASE_PATH} ${TLS_CERT} ${TLS_KEY} ${LISTEN_HTTP}' \
  <"$templates/$servers_template" >"$out/kheops-ohif-servers.conf"
# shellcheck disable=SC2016
envsubst '${BASE_PATH} ${PASS_ROOT} ${PASS_LAUNCHES} ${RELAY_OFFLOAD_KEY} ${RELAY_OFFLOAD_ORIGINS} ${FORWARDED_PROTO}' \
  <"$templates/server.conf.template" >"$out/kheops-ohif-server.conf"
# shellcheck disable=SC2016
envsubst '${RELAY_CA_FILE} ${RELAY_CONNECT_TIMEOUT}' \
  <"$templates/relay-location.conf.template" >"$out/kheops-relay-location.conf"
printf '%s' "$relay_http" >"$out/kheops-relay-http.conf"
printf '%s' "$relay_locations" >"$out/kheops-relay-locations.conf"
printf '%s' "$relay_modules" >"$out/kheops-relay-modules.conf"
printf '%s' "$relay_front" >"$out/kheops-relay-front.conf"
cp "$templates/kheops_relay.lua" "$out/kheops_relay.lua"
