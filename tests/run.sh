#!/usr/bin/env bash
# The test command: sets up what the tests need, then runs every test in the
# workspace. Usage: ./tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-target}"

# Python for the interoperability tests (PyJWT, cryptography, grpcio), in a venv
# kept beside the build output so reruns are instant.
if [ -z "${WARDEN_PYTHON:-}" ]; then
    venv="$(realpath -m "$target/py-venv")"
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "==> creating Python virtualenv at $venv"
        py="$(command -v python3.11 || command -v python3)"
        rm -rf "$venv"
        mkdir -p "$target"
        "$py" -m venv "$venv"
    fi
    # Reinstall only when the requirements changed.
    reqs="$(cat tests/python/requirements.txt tests/python/requirements-nodeps.txt)"
    if [ "$reqs" != "$(cat "$venv/.requirements" 2>/dev/null)" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            -r tests/python/requirements-nodeps.txt
        printf '%s' "$reqs" > "$venv/.requirements"
    fi
    export WARDEN_PYTHON="$venv/bin/python"
fi

# A real headless browser for the consent pages' test: Debian's chromium and
# chromedriver (Selenium drives them; nothing is downloaded at test time).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "==> installing chromium and chromium-driver (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Redis for the limit tests (found, started or installed).
TARGET="$target" ./tests/ensure-redis.sh

echo "==> cargo test --workspace"
cargo test --workspace "$@"
