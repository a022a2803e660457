#!/usr/bin/env bash
# Set up a checkout: the Debian packages liveart needs, the virtualenv .venv, and liveart installed
# into it in editable mode with the extras in LIVEART_EXTRAS (default: none, what a performer needs to
# play and render). Safe to run again; fast when nothing has changed. The test suite asks for
# dev,train,plot: the train extra pins torch==2.13.0 (a CPU build lies on this project's machines; an
# unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.liveart-pyproject.sha256"  # sha256 of pyproject.toml + extras at the last good install
EXTRAS="${LIVEART_EXTRAS:-}"
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
APT_PACKAGES=(libportaudio2 libsndfile1 fluidsynth fluid-soundfont-gm ffmpeg jackd2)
# The test suite (the dev extra) also drives the visualizer's web page in a real headless Chromium.
if [[ ",$EXTRAS," == *",dev,"* ]]; then
    APT_PACKAGES+=(chromium)
fi
MIN_PYTHON="3.10"

die() { echo "setup: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (and sudo is not installed)"
    fi
}

install_debian_packages() {
    if ! command -v dpkg >/dev/null 2>&1; then
        echo "setup: not a Debian system; make sure these are installed: ${APT_PACKAGES[*]}" >&2
        return
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # `dpkg -s` also succeeds for removed packages whose config files remain.
        dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    echo "setup: installing Debian packages: ${missing[*]}"
    # jackd2 asks whether to enable real-time priority; answer now so apt never prompts.
    echo "jackd2 jackd/tweak_rt_limits boolean false" | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

python_ok() {  # usage: python_ok EXECUTABLE → succeeds if it runs and is >= MIN_PYTHON
    "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" \
        >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        # A pyenv shim can exist for a version that is not installed, so run it to be sure.
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    die "no Python >= $MIN_PYTHON found (tried python3.11, python3); install one, e.g. python3.11"
}

make_venv() {
    if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
        return
    fi
    local python
    python="$(find_python)"
    ensure_venv_module "$python"
    echo "setup: creating .venv with $python ($("$python" --version 2>&1))"
    # --clear replaces a broken venv (e.g. one whose Python was removed).
    "$python" -m venv --clear "$VENV" \
        || die "'$python -m venv' failed; on Debian install python3-venv"
    rm -f "$STAMP"
}

ensure_venv_module() {  # Debian's Python ships venv's pip bootstrap in a separate package
    local python="$1" version
    "$python" -c "import ensurepip, venv" >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 || die "$python lacks the venv module; install it (python3-venv)"
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    echo "setup: installing python${version}-venv (the venv module for $python)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "python${version}-venv" >/dev/null 2>&1 \
        || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv >/dev/null \
        || die "could not install the venv module for $python (python3-venv)"
}

pyproject_hash() {
    "$VENV/bin/python" -c \
        'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read() + sys.argv[2].encode()).hexdigest())' \
        "$REPO_ROOT/pyproject.toml" "$EXTRAS"
}

install_package() {
    local hash
    hash="$(pyproject_hash)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
        return
    fi
    echo "setup: installing liveart into .venv (pip install -e '$SPEC')"
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    "${pip[@]}" install -q --upgrade pip || die "upgrading pip in .venv failed (see above)"
    (cd "$REPO_ROOT" && "${pip[@]}" install -q -e "$SPEC") \
        || die "pip install -e '$SPEC' failed (see above)"
    echo "$hash" >"$STAMP"
}

main() {
    install_debian_packages
    make_venv
    install_package
    echo "setup: ready ($("$VENV/bin/python" --version 2>&1) in .venv, Debian packages present)"
}

main "$@"
