#!/usr/bin/env bash
# The Debian bookworm base image every Containerfile here starts FROM (localhost/debian:bookworm),
# made locally with debootstrap and `podman import` when it is not there yet: no container
# registry is needed. With a registry at hand, pass --build-arg
# BASE_IMAGE=docker.io/library/debian:bookworm-slim to the builds instead.
#   deploy/base-image.sh [IMAGE]   (idempotent; rootful podman)
set -euo pipefail
image="${1:-${BASE_IMAGE:-localhost/debian:bookworm}}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if podman image exists "$image"; then
  exit 0
fi
cd "$(dirname "$0")/.."
scripts/ensure-debian-packages.sh debootstrap
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "Making $image with debootstrap (bookworm, minbase) from $mirror"
debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
root="$work/root"
# Security updates and point releases are installed when an image is built on top.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
# As Debian's own container images: no documentation, manual pages or translations installed
# later, no package lists or caches kept.
cat >"$root/etc/dpkg/dpkg.cfg.d/container-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
SLIM
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  >"$root/etc/apt/apt.conf.d/90container"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/{man,info}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
tar --numeric-owner -C "$root" -c . | podman import --quiet --change 'CMD ["bash"]' - "$image" >/dev/null
echo "Made $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
