#!/usr/bin/env bash
# System packages that `make test` and `make demo` need beyond Python and Go: Java 17 for TorchServe, and
# iproute2 (`ip`) for the devcluster's pod network (Prometheus and Traefik are built from their Go modules by
# devcluster/build.sh). Installs what is missing with apt-get (as root), or says exactly what to install.
set -euo pipefail

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v ip >/dev/null || missing+=(iproute2)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
