#!/usr/bin/env bash
# arm64_lane.sh: warmload's aarch64 lane on an x86-64 Debian host, no ARM hardware needed.
# Cross-compiles the C extension (warmload/kernels/*.c with arm/*.h) for aarch64 once per ARM
# kernel variant and runs the numpy-only kernel tests (tests/test_kernels_numpy.py; no torch on
# aarch64 here) under qemu user-mode emulation, on CPU models with and without the extensions:
#
#   variant  flags                             qemu CPUs it runs on
#   generic  -march=armv8-a -DWARMLOAD_GENERIC cortex-a72   (plain C: the reference builds)
#   neon     -march=armv8-a                    max, neoverse-n1, cortex-a72
#   dotprod  -march=armv8.2-a+dotprod+fp16     max, neoverse-n1   (cortex-a72 must refuse it)
#   i8mm     -march=armv8.2-a+dotprod+fp16+i8mm  max              (neoverse-n1 must refuse it)
#
# and checks (the test file's --digest) that every NEON build dequantizes to the plain C build's
# bits and that the NEON builds' integer products agree bit for bit. `make test-arm` runs `arm64_lane.sh all`. Emulation is 20-80x slower than hardware:
# the times it prints are correctness runs, never benchmarks.
#
#   arm64_lane.sh all [CHECKOUT]               setup (once) + the whole matrix above (default)
#   arm64_lane.sh CHECKOUT [PYTEST ARGS...]    setup + build (LANE_CFLAGS) + pytest
#   arm64_lane.sh setup [CHECKOUT]             host packages, binfmt, arm64 sysroot, pip wheels
#   arm64_lane.sh build CHECKOUT               copy CHECKOUT to the scratch dir, cross-build the .so
#   arm64_lane.sh test [PYTEST ARGS...]        pytest in the scratch dir (after build)
#   arm64_lane.sh py FILE [ARGS...]            run a Python file (copied in) in the scratch dir
#   arm64_lane.sh isa                          which NEON extensions each qemu CPU model executes
#                                              (arm64_isa_test.c beside this script)
#
# Idempotent: the sysroot and the pip site are made once (stamp files); re-running only copies
# the checkout again and recompiles. Must run as root (apt-get, mmdebstrap, chroot, binfmt).
# Facts: qemu 7.2 `-cpu max` executes dotprod, i8mm, fp16 and bf16 bit-exactly; neoverse-n1 has
# dotprod and fp16, no i8mm; cortex-a72 none (an unguarded sdot dies with SIGILL). In chroot mode
# there is no /proc inside: detect features with getauxval, not /proc/cpuinfo.
# Environment (defaults in brackets):
#   LANE_DIR [~/.cache/arm64-lane]           work folder; the sysroot is $LANE_DIR/sysroot (or LANE_ROOT)
#   LANE_VARIANT [extract]         extract: Debian python3 + headers unpacked, no foreign code run
#                                  (~20 s); minbase: full install, maintainer scripts under qemu
#   LANE_PIP [numpy pytest gguf]   aarch64 wheels pip-installed into /opt/lane-site of the sysroot;
#                                  pinned to the versions in CHECKOUT/.venv when there is one
#   LANE_CFLAGS [-O3 -std=c11 -Wall -Wno-unused-function]  (`all` adds each variant's -march)
#   LANE_EXT [warmload/kernels/_cpu]        extension module path (the .so is LANE_EXT + EXT_SUFFIX)
#   LANE_EXT_SRC [warmload/kernels/*.c]     its sources, relative to the checkout
#   LANE_LDFLAGS [-lpthread]
#   LANE_MODE [auto]               chroot (needs binfmt with the F flag; no /proc inside) or qemu
#                                  (qemu-aarch64-static -L; no binfmt needed)
#   QEMU_CPU [max]                 qemu CPU model (max, neoverse-n1, cortex-a76, cortex-a72, a64fx, ...)
set -euo pipefail

LANE_DIR=${LANE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/arm64-lane}
ROOT=${LANE_ROOT:-$LANE_DIR/sysroot}
SUITE=${LANE_SUITE:-bookworm}
MIRROR=${LANE_MIRROR:-}  # empty: the host's apt sources
VARIANT=${LANE_VARIANT:-extract}
CFLAGS=${LANE_CFLAGS:--O3 -std=c11 -Wall -Wno-unused-function}
LDFLAGS=${LANE_LDFLAGS:--lpthread}
EXT=${LANE_EXT:-warmload/kernels/_cpu}
EXT_SRC=${LANE_EXT_SRC:-warmload/kernels/*.c}
SCRATCH=/lane/work # inside the sysroot: $ROOT$SCRATCH on the host
SITE=/opt/lane-site
export QEMU_CPU=${QEMU_CPU:-max}
NICE=(nice -n 10)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[arm64-lane %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

binfmt_ok() { # qemu-aarch64 registered, enabled, with the F flag (interpreter usable in a chroot)
    local f=/proc/sys/fs/binfmt_misc/qemu-aarch64
    [ -r "$f" ] && head -1 "$f" | grep -qx enabled && grep -q '^flags: .*F' "$f"
}

mode() {
    case ${LANE_MODE:-auto} in
    chroot | qemu) echo "$LANE_MODE" ;;
    *) if binfmt_ok; then echo chroot; else echo qemu; fi ;;
    esac
}

pyver() { # python3.X of the sysroot
    local d
    d=$(ls -d "$ROOT"/usr/include/python3.* 2>/dev/null | head -1) || true
    [ -n "$d" ] || die "no python headers in $ROOT (run setup)"
    echo "${d##*/python}"
}

# arm_cmd CWD ARGS...: sets CMD to the sysroot's python3 run in CWD (a path inside the sysroot)
arm_cmd() {
    local cwd=$1
    shift
    local wrapper='import os, runpy, sys
os.chdir(sys.argv[1]); sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "-m":
    sys.argv = sys.argv[3:]; runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name="__main__")'
    if [ "$(mode)" = chroot ]; then
        CMD=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 TMPDIR=/tmp
            PYTHONPATH="$SITE:$SCRATCH" QEMU_CPU="$QEMU_CPU"
            "$(command -v chroot)" "$ROOT" /usr/bin/python3 -c "$wrapper" "$cwd" "$@")
    else # qemu -L maps open/stat of /usr/... to the sysroot but not chdir: host paths for ours
        CMD=(env -i "$(command -v qemu-aarch64-static)" -cpu "$QEMU_CPU" -L "$ROOT" -E LANG=C.UTF-8
            -E PYTHONPATH="$ROOT$SITE:$ROOT$SCRATCH" "$ROOT/usr/bin/python3" -c "$wrapper" "$ROOT$cwd")
        local a
        for a in "$@"; do [[ $a == "$SCRATCH"/* ]] && CMD+=("$ROOT$a") || CMD+=("$a"); done
    fi
}

pip_spec() { # "name==version ..." from CHECKOUT/.venv where it has them, else the bare names
    local co=${1:-} names=${LANE_PIP:-numpy pytest gguf} out=() n v
    for n in $names; do
        v=""
        if [[ $n != *[=\<\>]* ]] && [ -n "$co" ] && [ -x "$co/.venv/bin/python" ]; then
            v=$("$co/.venv/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n" 2>/dev/null) || v=""
            v=${v%%+*} # no local label (2.13.0+cpu): PyPI's aarch64 wheels have none
        fi
        out+=("$n${v:+==$v}")
    done
    echo "${out[*]}"
}

setup() {
    local co=${1:-} t0=$SECONDS
    exec 9>"$LANE_DIR/.lock"
    flock 9
    # host tools
    local pkgs=()
    command -v qemu-aarch64-static >/dev/null || pkgs+=(qemu-user-static binfmt-support)
    command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
    command -v aarch64-linux-gnu-gcc >/dev/null || pkgs+=(gcc-aarch64-linux-gnu)
    if [ ${#pkgs[@]} -gt 0 ]; then
        log "apt-get install ${pkgs[*]}"
        timeout 600 apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive timeout 900 "${NICE[@]}" apt-get install -y -q "${pkgs[@]}" >/dev/null
    fi
    # binfmt (optional: without it the lane runs qemu-aarch64-static -L directly)
    if ! binfmt_ok; then
        [ -e /proc/sys/fs/binfmt_misc/status ] ||
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
        update-binfmts --enable qemu-aarch64 2>/dev/null || true
    fi
    binfmt_ok && log "binfmt qemu-aarch64: enabled (F)" || log "binfmt qemu-aarch64: unavailable, qemu -L mode"
    # the arm64 sysroot
    if [ ! -e "$ROOT/.lane-sysroot" ]; then
        [ "$VARIANT" = extract ] || binfmt_ok || die "LANE_VARIANT=$VARIANT needs binfmt; use extract"
        local inc=python3,python3-dev,libstdc++6
        [ "$VARIANT" = extract ] || inc=$inc,python3-numpy,python3-pytest
        log "mmdebstrap --arch=arm64 --variant=$VARIANT $SUITE -> $ROOT"
        rm -rf "$ROOT.tmp"
        timeout 1800 "${NICE[@]}" mmdebstrap --quiet --arch=arm64 --variant="$VARIANT" --include="$inc" \
            "$SUITE" "$ROOT.tmp" ${MIRROR:+"$MIRROR"} >&2
        rm -rf "$ROOT"
        mv "$ROOT.tmp" "$ROOT"
        mkdir -p "$ROOT/tmp" "$ROOT/root" "$ROOT$SCRATCH"
        chmod 1777 "$ROOT/tmp"
        echo "$VARIANT $SUITE" >"$ROOT/.lane-sysroot"
    fi
    # aarch64 wheels (numpy, pytest, ...) for the sysroot's python
    local v spec
    v=$(pyver)
    spec="$(pip_spec "$co") py$v"
    if [ "$(cat "$ROOT$SITE/.lane-pip" 2>/dev/null)" != "$spec" ]; then
        log "pip install --target $SITE (aarch64, cp${v/./}): ${spec% *}"
        rm -rf "$ROOT$SITE"
        # shellcheck disable=SC2086
        timeout 900 "${NICE[@]}" python3 -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --target "$ROOT$SITE" --only-binary=:all: --python-version "$v" --implementation cp --abi "cp${v/./}" \
            --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
            --platform manylinux_2_28_aarch64 --platform manylinux_2_31_aarch64 --platform manylinux_2_34_aarch64 \
            ${spec% *} 2>&1 | grep -v -e "^WARNING: Location 'file:" -e "Running pip as the 'root' user" >&2 || true
        [ -d "$ROOT$SITE/pytest" ] || die "pip install failed"
        echo "$spec" >"$ROOT$SITE/.lane-pip"
    fi
    flock -u 9
    log "setup done in $((SECONDS - t0)) s ($(mode) mode, QEMU_CPU=$QEMU_CPU)"
}

build() {
    local co t0=$SECONDS v s=$ROOT$SCRATCH
    co=$(realpath "${1:?checkout}")
    [ -e "$ROOT/.lane-sysroot" ] || die "no sysroot: run setup"
    v=$(pyver)
    rm -rf "$s"
    mkdir -p "$s"
    if git -C "$co" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # tracked and untracked-not-ignored files (no .venv, build outputs or host .so files)
        (cd "$co" && git ls-files -z -c -o --exclude-standard |
            tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$s" -xf -
    else
        tar -C "$co" --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.so' -cf - . |
            tar -C "$s" -xf -
    fi
    local suffix=.cpython-${v/./}-aarch64-linux-gnu.so ext=$EXT defs=() inc
    inc=(-I"$ROOT/usr/include/python$v" -idirafter "$ROOT/usr/include")
    if grep -q WARMLOAD_MODULE "$s/warmload/kernels/module.c"; then
        # one module per variant, picked by warmload/kernels/dispatch.py (setup.py's naming)
        ext=warmload/kernels/_cpu_${LANE_NAME:-neon}
        defs=(-DWARMLOAD_MODULE="_cpu_${LANE_NAME:-neon}" -DWARMLOAD_VARIANT="\"${LANE_NAME:-neon}\"")
    fi
    if [ -e "$s/warmload/kernels/features/features.c" ]; then # dispatch's getauxval probe
        (cd "$s" && aarch64-linux-gnu-gcc -O2 -std=c11 -shared -fPIC "${inc[@]}" \
            warmload/kernels/features/features.c -o "warmload/kernels/_features$suffix")
    fi
    local out=$s/$ext$suffix
    log "aarch64-linux-gnu-gcc $CFLAGS ${defs[*]} -> ${out#"$ROOT"}"
    # shellcheck disable=SC2086
    (cd "$s" && timeout 900 "${NICE[@]}" aarch64-linux-gnu-gcc $CFLAGS "${defs[@]}" -shared -fPIC \
        "${inc[@]}" $EXT_SRC -o "$out" $LDFLAGS)
    log "build done in $((SECONDS - t0)) s: $(file -b "$out" | cut -d, -f1-2)"
}

run_tests() {
    [ -d "$ROOT$SCRATCH" ] || die "nothing built: run build CHECKOUT"
    local t0 rc=0 ms
    t0=$(date +%s%N)
    [ $# -gt 0 ] || set -- tests/test_kernels_numpy.py -q --noconftest
    log "pytest (aarch64, $(mode) mode, QEMU_CPU=$QEMU_CPU): $*"
    arm_cmd "$SCRATCH" -m pytest -p no:cacheprovider "$@"
    timeout "${LANE_TIMEOUT:-3600}" "${NICE[@]}" "${CMD[@]}" || rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    log "pytest exit $rc in $((ms / 1000)).$((ms % 1000 / 100)) s"
    return $rc
}

run_py() {
    local f=${1:?python file}
    shift
    mkdir -p "$ROOT$SCRATCH/.lane"
    cp "$f" "$ROOT$SCRATCH/.lane/"
    arm_cmd "$SCRATCH" "$SCRATCH/.lane/$(basename "$f")" "$@"
    timeout "${LANE_TIMEOUT:-3600}" "${NICE[@]}" "${CMD[@]}"
}

isa() { # isa_test.c next to this script: static binary, no sysroot needed
    local bin=$LANE_DIR/isa_test cpu src=${LANE_ISA_SRC:-$HERE/arm64_isa_test.c}
    aarch64-linux-gnu-gcc -O2 -static -march=armv8.6-a+dotprod+i8mm+fp16+bf16 "$src" -o "$bin" -lm
    for cpu in max neoverse-n1 cortex-a76 cortex-a72 a64fx; do
        echo "== -cpu $cpu"
        timeout 120 qemu-aarch64-static -cpu "$cpu" "$bin" || echo "exit $?"
    done
}


# variant|flags|CPUs that must run it|CPUs that must not (SIGILL, or the dispatcher refuses it)
VARIANTS=(
    "generic|-march=armv8-a -DWARMLOAD_GENERIC|cortex-a72|"
    "neon|-march=armv8-a|max neoverse-n1 cortex-a72|"
    "dotprod|-march=armv8.2-a+dotprod+fp16|max neoverse-n1|cortex-a72"
    "i8mm|-march=armv8.2-a+dotprod+fp16+i8mm|max|neoverse-n1"
)

matrix() { # every variant built, its tests run on each CPU that has its extensions
    local co=${1:?checkout} v name march ok refuse cpu rc out deq prod
    local base=${LANE_CFLAGS:--O3 -std=c11 -Wall -Wno-unused-function} t0
    local first_deq="" first_prod="" failures=() passed=()
    for v in "${VARIANTS[@]}"; do
        IFS='|' read -r name march ok refuse <<<"$v"
        LANE_NAME=$name CFLAGS="$base $march" build "$co"
        for cpu in $ok; do
            t0=$SECONDS
            rc=0
            QEMU_CPU=$cpu run_tests tests/test_kernels_numpy.py -q --noconftest || rc=$?
            out=$(QEMU_CPU=$cpu run_py_here tests/test_kernels_numpy.py --digest) || rc=$?
            deq=$(grep '^dequant digest' <<<"$out") || true
            prod=$(grep '^product digest' <<<"$out") || true
            log "$name on $cpu: exit $rc, $((SECONDS - t0)) s emulated (correctness only)"
            log "  $deq"
            log "  $prod"
            [ -n "$first_deq" ] || first_deq=$deq
            [ "$name" = generic ] || [ -n "$first_prod" ] || first_prod=$prod
            if [ "$rc" != 0 ]; then failures+=("$name/$cpu: tests failed")
            elif [ "$deq" != "$first_deq" ]; then failures+=("$name/$cpu: dequantizes to other bits")
            elif [ "$name" != generic ] && [ "$prod" != "$first_prod" ]; then
                failures+=("$name/$cpu: integer products give other bits")
            else passed+=("$name/$cpu"); fi
        done
        for cpu in $refuse; do
            # a CPU without the build's extensions: with a dispatcher (warmload.kernels.dispatch)
            # the build must not be chosen; without one, importing and running it must trap
            rc=0
            out=$(QEMU_CPU=$cpu run_py_here tests/test_kernels_numpy.py --digest 2>&1) || rc=$?
            if [ "$rc" = 132 ]; then passed+=("$name/$cpu: SIGILL as expected (no dispatcher)")
            elif [ "$rc" = 0 ] && grep -q "available False" <<<"$out"; then
                passed+=("$name/$cpu: refused by the dispatcher")
            else failures+=("$name/$cpu: ran a build the CPU cannot (exit $rc)"); fi
        done
    done
    log "passed: ${passed[*]}"
    [ ${#failures[@]} = 0 ] || die "failed: ${failures[*]}"
    log "every build passed; dequantizers as the plain C build's, integer products one set of bits"
}

run_py_here() { # a Python file of the copied checkout, run in the scratch dir
    local f=${1:?python file}
    shift
    arm_cmd "$SCRATCH" "$SCRATCH/$f" "$@"
    timeout "${LANE_TIMEOUT:-3600}" "${NICE[@]}" "${CMD[@]}"
}

mkdir -p "$LANE_DIR"
case ${1:-all} in
all) shift || true; co=${1:-$(cd "$HERE/.." && pwd)}; setup "$co"; matrix "$co" ;;
setup) shift; setup "$@" ;;
build) shift; build "$@" ;;
test) shift; run_tests "$@" ;;
py) shift; run_py "$@" ;;
isa) isa ;;
"" | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
*)
    co=$1
    shift
    setup "$co"
    build "$co"
    run_tests "$@"
    ;;
esac
