#!/usr/bin/env bash
# Memory checkers over fastrnn's compiled code, reproducible from a clean checkout.
#
#   1. AddressSanitizer + LeakSanitizer. The extensions are rebuilt with
#      -fsanitize=address in a copy of the tree; gcc's libasan is preloaded into the
#      ordinary (uninstrumented) Python, with PYTHONMALLOC=malloc so that every Python
#      object is a malloc block the sanitizers see. The kernel, layer, stream, model,
#      bad-input and concurrency tests run under it (an ASan error stops the process and is
#      logged); then tools/smoke.py runs with full stacks (slow unwinding), so that every
#      leak can be traced to the code that allocated it.
#   2. valgrind --leak-check=full, PYTHONMALLOC=malloc, on tools/smoke.py over a plain
#      build in a second copy (valgrind cannot run ASan binaries).
#
# tools/sanitize_report.py reads the logs and counts the reports, attributing each to
# fastrnn's compiled code or to something else (CPython, numpy, OpenBLAS, the dynamic
# loader); the script exits 1 on any report in fastrnn code, on any ASan error, or on a
# failing test. The memory (RSS) tests are not run here: ASan's quarantine holds freed
# memory on purpose.
#
# Usage: tools/sanitize.sh [PYTHON]     (default python3; needs gcc with libasan, valgrind,
#                                        and the test dependencies: pip install -e .[test])
# Takes about 5 minutes on 2 cores. Logs stay in the printed folder.
set -euo pipefail
shopt -s nullglob

PY=${1:-${PYTHON:-python3}}
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sanitize.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
echo "work folder: $WORK"

copy_tree() {       # the checkout's files (tracked and new, never build products) into $1
    mkdir -p "$1"
    if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$SRC" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) \
            | tar -C "$1" -xf -
    else
        (cd "$SRC" && tar --exclude=.git --exclude=build --exclude='*.so' \
            --exclude='fastrnn/_*.c' --exclude='__pycache__' -cf - .) | tar -C "$1" -xf -
    fi
}

status=0
ASAN_LIB=$(gcc -print-file-name=libasan.so)
[ -f "$ASAN_LIB" ] || { echo "gcc's libasan not found"; exit 2; }

# ---- 1. AddressSanitizer / LeakSanitizer ------------------------------------------------
copy_tree "$WORK/asan"
echo "building with -fsanitize=address ..."
(cd "$WORK/asan" && CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" \
    LDFLAGS="-fsanitize=address" "$PY" setup.py build_ext --inplace \
    >"$LOGS/build-asan.txt" 2>&1) || { tail -30 "$LOGS/build-asan.txt"; exit 2; }

TESTS="tests/test_kernels.py tests/test_kernel_guards.py tests/test_gradcheck.py
       tests/test_blas.py tests/test_activations.py tests/test_simd_paths.py
       tests/test_layers.py tests/test_sequence.py tests/test_stream.py tests/test_threads.py
       tests/test_models.py tests/test_bad_input.py tests/test_concurrency.py"
# exitcode=0: leaks at exit (CPython's and numpy's own) must not fail the subprocesses some
# tests start; every report is in the logs, which are what counts
ASAN_COMMON="detect_leaks=1:exitcode=0"
echo "tests under ASan ..."
(cd "$WORK/asan" && LD_PRELOAD=$ASAN_LIB PYTHONMALLOC=malloc \
    ASAN_OPTIONS="$ASAN_COMMON:log_path=$LOGS/asan-tests" \
    "$PY" -m pytest -q -p no:cacheprovider $TESTS) | tail -3 || status=1
echo "smoke run under ASan, full stacks ..."
FULL_STACKS="fast_unwind_on_malloc=0:malloc_context_size=40"
(cd "$WORK/asan" && LD_PRELOAD=$ASAN_LIB PYTHONMALLOC=malloc \
    ASAN_OPTIONS="$ASAN_COMMON:$FULL_STACKS:log_path=$LOGS/asan-smoke" \
    "$PY" tools/smoke.py) || status=1
"$PY" "$SRC/tools/sanitize_report.py" asan "$LOGS"/asan-tests* "$LOGS"/asan-smoke* || status=1

# ---- 2. valgrind ----------------------------------------------------------------------------
copy_tree "$WORK/plain"
echo "plain build for valgrind ..."
(cd "$WORK/plain" && "$PY" setup.py build_ext --inplace >"$LOGS/build-plain.txt" 2>&1) \
    || { tail -30 "$LOGS/build-plain.txt"; exit 2; }
echo "smoke run under valgrind ..."
# OMP_WAIT_POLICY=passive: valgrind runs one thread at a time, spinning threads would crawl
(cd "$WORK/plain" && PYTHONMALLOC=malloc OMP_WAIT_POLICY=passive \
    valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --num-callers=40 --log-file="$LOGS/valgrind.%p" "$PY" tools/smoke.py) || status=1
"$PY" "$SRC/tools/sanitize_report.py" valgrind "$LOGS"/valgrind.* || status=1

echo "logs: $LOGS"
exit $status
