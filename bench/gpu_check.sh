#!/usr/bin/env bash
# The torch engine's CUDA paths in one call on a machine with an NVIDIA GPU (under 5 minutes):
# `pytest -m gpu tests/test_gpu.py`, then bench/flash_speed.py's torch table on cuda, then ONE summary line
#   gpu_check: tests N passed M failed K skipped; flash_speed (b)/(a) X (c)/(a) Y by wall-clock; total T s
# Exit 0 when everything passed; 1 when a test or the bench failed; 2 when no CUDA device is usable (one
# line saying why); 3 when the project's Python dependencies are missing and cannot be installed.
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from a copy of the repository
#   bash bench/gpu_check.sh --fetch-wheels  # where PyPI is reachable: the project's pure dependencies as
#                                           # wheels for CPython 3.12 / x86-64 into .whl/, for a GPU machine
#                                           # that has torch but cannot download (carry .whl along)
#
# Python: $GPU_CHECK_PYTHON, else .venv/bin/python, else python3: the first whose torch sees a CUDA device
# (a CPU build of torch never does). Logs go to $OUT (where set) or /tmp: gpu_check-pytest.log,
# gpu_check-flash_speed.log.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
LOGS="${OUT:-/tmp}"
START=$(date +%s)
# What the GPU tests import beyond torch: the project's own dependencies and the test tools.
NEEDED="pydantic optuna sqlalchemy tenacity yaml transformers safetensors sklearn pytest nas_distill.config"
# Pure dependencies a torch-only image lacks (versions: the ones the test suite runs with here).
WHEELS="optuna pydantic pydantic-core annotated-types typing-inspection typing-extensions tenacity sqlalchemy
alembic mako colorlog"
# Already in a torch image: dropped from .whl/ so they never shadow the image's own builds.
IMAGE_HAS="numpy packaging pyyaml tqdm markupsafe"

if [ "${1:-}" = "--fetch-wheels" ]; then
    py="${GPU_CHECK_PYTHON:-.venv/bin/python}"
    pins=$("$py" - $WHEELS <<'EOF'
import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))
EOF
    ) || exit 3
    mkdir -p .whl
    "$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d .whl $pins || exit 3
    for name in $IMAGE_HAS; do
        find .whl -maxdepth 1 -iname "${name}-*.whl" -delete
    done
    echo "gpu_check: $(ls .whl/*.whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
    exit 0
fi

# ---- a CUDA device, and a torch that can use it
gpu=$(nvidia-smi -L 2>/dev/null | head -n 1)
echo "${gpu:-nvidia-smi: no GPU listed}"
PY=""
for candidate in "${GPU_CHECK_PYTHON:-}" .venv/bin/python python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        PY="$candidate"
        break
    fi
done
if [ -z "$PY" ]; then
    if [ -n "$gpu" ]; then
        echo "gpu_check: no CUDA device usable by torch (nvidia-smi lists a GPU; no Python here has a CUDA torch)"
    else
        echo "gpu_check: no CUDA device"
    fi
    exit 2
fi
"$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")'

# ---- the project's dependencies: present, else from carried wheels, else pip (needs a network)
missing() {
    "$PY" - $NEEDED <<'EOF'
import importlib, sys
gone = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a broken install counts as missing
        gone.append(f"{name} ({type(exc).__name__})")
print(" ".join(gone))
EOF
}
gone=$(missing)
if [ -n "$gone" ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl >/dev/null 2>&1
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
    gone=$(missing)
fi
if [ -n "$gone" ]; then
    timeout 120 "$PY" -m pip install -q --retries 1 --timeout 10 -e . >/dev/null 2>&1
    gone=$(missing)
fi
if [ -n "$gone" ]; then
    echo "gpu_check: missing Python packages: $gone (run 'bash bench/gpu_check.sh --fetch-wheels' where PyPI" \
         "is reachable and carry .whl)"
    exit 3
fi

# ---- the GPU tests
failed=0
timeout 180 "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rs \
    --junitxml=/tmp/gpu_check.xml >"$LOGS/gpu_check-pytest.log" 2>&1
pytest_rc=$?
tail -n 15 "$LOGS/gpu_check-pytest.log"
read -r passed failures skipped < <("$PY" - <<'EOF'
import xml.etree.ElementTree as ET
try:
    suite = next(ET.parse("/tmp/gpu_check.xml").getroot().iter("testsuite"))
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    print(n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"] + n["errors"], n["skipped"])
except Exception:  # noqa: BLE001 - no report: pytest never got to write one
    print(0, 1, 0)
EOF
)
# On a CUDA machine nothing may skip, and a run that passed nothing checked nothing.
if [ "$pytest_rc" -ne 0 ] || [ "$failures" -ne 0 ] || [ "$skipped" -ne 0 ] || [ "$passed" -eq 0 ]; then
    failed=1
fi

# ---- the flash-distillation speed table on the GPU (short: 10 steps x 3 rounds)
timeout 100 "$PY" bench/flash_speed.py --engine torch --device cuda --steps 10 --rounds 3 \
    >"$LOGS/gpu_check-flash_speed.log" 2>&1
bench_rc=$?
tail -n 8 "$LOGS/gpu_check-flash_speed.log"
ratio() {  # the wall-clock "vs (a)" column of a row of the table (the third field from the end)
    awk -v row="$1" 'index($0, row) == 1 { print $(NF - 2) }' "$LOGS/gpu_check-flash_speed.log"
}
b=$(ratio "(b) engine, live teacher")
c=$(ratio "(c) engine, warm teacher cache")
if [ "$bench_rc" -eq 0 ] && [ -n "$b" ] && [ -n "$c" ]; then
    bench="flash_speed (b)/(a) $b (c)/(a) $c by wall-clock"
else
    bench="flash_speed FAILED (exit $bench_rc, see $LOGS/gpu_check-flash_speed.log)"
    failed=1
fi

echo "gpu_check: tests $passed passed $failures failed $skipped skipped; $bench; total $(( $(date +%s) - START )) s"
exit "$failed"
