#!/bin/sh
# Installs the Debian packages BIMIP needs to build and test, when missing.
# Run as root it installs them with apt-get; otherwise it names them and fails.
set -eu
PKGS="build-essential pkg-config clang libclang-rt-14-dev libevent-dev libzmq3-dev
      libmbedtls-dev libjansson-dev libcmocka-dev nanopb libnanopb-dev
      protobuf-compiler python3-protobuf"
# Only for benchmarks and deployment checks; installed on request.
[ "${1:-}" = "--bench" ] && PKGS="$PKGS mosquitto mosquitto-clients haproxy"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "bimip: missing Debian packages:$missing" >&2
	echo "bimip: install them with: sudo apt-get install$missing" >&2
	exit 1
fi
echo "bimip: installing missing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >&2
