#!/usr/bin/env bash
# kdzero on one GPU, checked and timed in under 8 minutes: bash experiments/gpu_check.sh
#
# Needs nothing but the checkout and its git-ignored local_data/ folder, laid out like ../shared/data:
#   local_data/cifar10-jpeg.tar.gz                                   (the CIFAR-10 JPEG archive)
#   local_data/teachers/akamaster-cifar10/resnet56-4bfd9763.th       (the pretrained teacher)
#   local_data/wheels/*.whl   (optional: Python packages the GPU image lacks, for Python 3.12: optuna, alembic,
#                              sqlalchemy, colorlog, mako; pip download fills it where a registry is reachable)
# Where ../shared/data sits beside the checkout (the development machines), this script fills local_data/ from
# it, and downloads the wheels when pip can reach its registry. By hand:
#   mkdir -p local_data/teachers/akamaster-cifar10
#   cp ../shared/data/cifar10-jpeg.tar.gz local_data/
#   cp ../shared/data/teachers/akamaster-cifar10/resnet56-4bfd9763.th local_data/teachers/akamaster-cifar10/
# To ship it to a GPU machine, carry local_data/cifar10-jpeg.tar.gz, local_data/teachers and local_data/wheels
# (about 28 MB), not the extracted local_data/cifar10-jpeg/ (60,000 files, re-extracted there in seconds).
#
# Steps, each under its own timeout so that the whole stays under GPU_CHECK_BUDGET seconds (default 470):
#   1. install: keeps a Python that already imports torch (the GPU image's CUDA build); otherwise
#      pip install torch==2.14.1 torchvision==0.29.1; then the packages still missing, from local_data/wheels
#      (offline, into a private folder on PYTHONPATH) or with pip install -e ".[test]"; the checkout itself is
#      used through PYTHONPATH, so a shared environment is never re-pointed at this checkout;
#   2. tests/test_cuda.py (skips cleanly without CUDA);
#   3. benchmarks, each printing ratios measured side by side: bench_proxy (a straightforward DataLoader loop
#      vs kdzero fp32 / bf16 / grouped), bench_batched (looped vs stacked at G = 1, 4, 16, 32), bench_kd_step;
#   4. a search on CIFAR-10 JPEG, resnet56a -> resnet20a, --group-size auto, stopped after about 3 minutes
#      (Ctrl-C, as a user would), and its candidates per hour read from the study (gpu_search_timing.py).
# Without a GPU it says so and runs the same steps on the CPU with tiny budgets (a check of the plumbing, not
# a measurement; under 5 minutes), then exits 0 if nothing failed.
#
# Everything lands in one folder, $OUT if set, else ./gpu_check_out: gpu_check.log (all output), one log per
# step, the benchmark reports, test_cuda.xml, search_study.db and results.json (the figures). The exit status
# is non-zero when the install, a test, a benchmark or the search failed (a benchmark stopped by its timeout is
# marked timed_out in results.json, not failed: on a loaded CPU the tiny budgets may still not fit).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/gpu_check.log"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-470}"  # seconds for everything on a GPU machine; 280 without one (set below)
DATA="$ROOT/local_data"
SHARED="$ROOT/../shared/data"
TEACHER_REL="teachers/akamaster-cifar10/resnet56-4bfd9763.th"
SCRATCH="${TMPDIR:-/tmp}/kdzero-gpu-check"
STEPS="$OUT_DIR/steps.tsv"
: > "$STEPS"
FAILED=0

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run_step NAME SECONDS CMD...: run CMD under a timeout, its output in NAME.log and the main log; record it.
run_step() {
    local name="$1" limit="$2" began rc
    shift 2
    if (( limit < 5 )); then
        say "$name: skipped, the time budget is spent"
        printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 0 >> "$STEPS"
        return 0
    fi
    say "$name (timeout ${limit}s): $*"
    began=$(date +%s)
    timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - began ))" "$limit" >> "$STEPS"
    say "$name: exit $rc after $(( $(date +%s) - began ))s"
    return "$rc"
}

# ------------------------------------------------------------------------------------------- 0. local_data
fill_local_data() {
    mkdir -p "$DATA/teachers/akamaster-cifar10"
    if [[ -d "$SHARED" ]]; then
        [[ -f "$DATA/cifar10-jpeg.tar.gz" ]] || cp "$SHARED/cifar10-jpeg.tar.gz" "$DATA/"
        [[ -f "$DATA/$TEACHER_REL" ]] || cp "$SHARED/$TEACHER_REL" "$DATA/$TEACHER_REL"
        [[ -f "$DATA/teachers/akamaster-cifar10/LICENSE" || ! -f "$SHARED/teachers/akamaster-cifar10/LICENSE" ]] \
            || cp "$SHARED/teachers/akamaster-cifar10/LICENSE" "$DATA/teachers/akamaster-cifar10/"
        if [[ ! -d "$DATA/wheels" ]]; then
            say "downloading the GPU image's missing packages (Python 3.12 wheels) into local_data/wheels"
            timeout 120 "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux2014_x86_64 -d "$DATA/wheels.partial" optuna==5.1.0 alembic==1.20.1 \
                SQLAlchemy==2.1.9 colorlog==6.12.0 Mako==1.4.3 \
                && mv "$DATA/wheels.partial" "$DATA/wheels" || say "no wheels downloaded (no registry?)"
            rm -rf "$DATA/wheels.partial"
        fi
    fi
    if [[ -f "$DATA/cifar10-jpeg.tar.gz" && ! -d "$DATA/cifar10-jpeg/train" ]]; then
        say "extracting local_data/cifar10-jpeg.tar.gz"
        mkdir -p "$DATA/cifar10-jpeg" && tar xzf "$DATA/cifar10-jpeg.tar.gz" -C "$DATA/cifar10-jpeg"
    fi
    if [[ -d "$DATA/cifar10-jpeg/train" && -f "$DATA/$TEACHER_REL" ]]; then
        HAVE_DATA=1
    else
        HAVE_DATA=0
        say "local_data/ lacks the CIFAR-10 archive or the teacher: the benchmarks and the search are skipped" \
            "(see the top of this script for how to fill it)"
    fi
}

# ------------------------------------------------------------------------------------------- 1. install
install() {
    local missing
    if ! "$PY" -c "import torch" 2>/dev/null; then
        say "no torch in $PY: pip install torch==2.14.1 torchvision==0.29.1"
        timeout 300 "$PY" -m pip install -q ${WHEELS:+--find-links "$WHEELS"} torch==2.14.1 torchvision==0.29.1 || return 1
    fi
    missing=$("$PY" - <<'EOF'
import importlib.util
need = {"torchvision": "torchvision", "einops": "einops", "optuna": "optuna", "numpy": "numpy", "pandas": "pandas",
        "rich": "rich", "sklearn": "scikit-learn", "pytest": "pytest", "hypothesis": "hypothesis", "scipy": "scipy"}
print(" ".join(dist for module, dist in need.items() if importlib.util.find_spec(module) is None))
EOF
)
    if [[ -n "$missing" ]]; then
        if [[ -n "$WHEELS" ]]; then
            say "missing $missing: installing local_data/wheels offline into $SCRATCH/site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" \
                "$WHEELS"/*.whl || return 1
            export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
        else
            say "missing $missing: pip install -e .[test]"
            timeout 300 "$PY" -m pip install -q -e ".[test]" || return 1
        fi
    fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import kdzero, optuna, torch, torchvision; print('kdzero from', kdzero.__file__); print('torch', \
torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('optuna', \
optuna.__version__)"
}

PY="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$SCRATCH"
say "checkout $ROOT; output $OUT_DIR; python $PY; budget ${BUDGET}s"
fill_local_data
WHEELS=""
[[ -d "$DATA/wheels" ]] && compgen -G "$DATA/wheels/*.whl" > /dev/null && WHEELS="$DATA/wheels"
began=$(date +%s)
if install 2>&1; then
    printf '%s\t%s\t%s\t%s\n' install 0 "$(( $(date +%s) - began ))" 0 >> "$STEPS"
else
    printf '%s\t%s\t%s\t%s\n' install 1 "$(( $(date +%s) - began ))" 0 >> "$STEPS"
    say "FAILED: the project could not be installed or imported"
    FAILED=1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export KDZERO_SHARED_DATA="$DATA" KDZERO_CIFAR10_JPEG="$DATA/cifar10-jpeg" PYTHONUNBUFFERED=1

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    GPU=1
    DEV=cuda
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    say "GPU present: full checks and timings"
else
    GPU=0
    DEV=cpu
    BUDGET="${GPU_CHECK_BUDGET:-280}"
    export OMP_NUM_THREADS=1
    say "NO GPU: CUDA tests skip; the benchmarks and the search run on the CPU with tiny budgets (plumbing only)"
fi

# The JPEGs are decoded once into kdzero's ImageFolder cache (~/.cache/kdzero/imagefolder), so that no benchmark
# pays for it inside its own timeout.
if (( FAILED == 0 && HAVE_DATA )); then
    run_step decode_data "$(( GPU ? 120 : 300 ))" "$PY" -c "from kdzero.train import load_data; \
d = load_data('imagefolder:$DATA/cifar10-jpeg', normalize='imagenet'); \
print('decoded', len(d.train), 'train and', len(d.val), 'val images of', d.name)" || HAVE_DATA=0
fi

# ------------------------------------------------------------------------------------------- 2. tests
if (( FAILED == 0 )); then
    run_step test_cuda "$(( GPU ? 150 : 120 ))" "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
        --junitxml="$OUT_DIR/test_cuda.xml" -rs || FAILED=1
fi

# ------------------------------------------------------------------------------------------- 3. benchmarks
bench() {  # bench NAME SECONDS ARGS...: experiments/bench_NAME.py with its report in the output folder
    local name="$1" limit="$2"
    shift 2
    local cap=$(( $(left) - (GPU ? 150 : 35) ))  # keep time for the search
    (( limit > cap )) && limit=$cap
    run_step "bench_$name" "$limit" "$PY" "experiments/bench_$name.py" "$@"
    case $? in
        0) ;;
        124|137) say "bench_$name: stopped by its timeout, no figures (results.json marks it timed_out)" ;;
        *) say "FAILED: bench_$name"; FAILED=1 ;;
    esac
}
if (( FAILED == 0 && HAVE_DATA )); then
    if (( GPU )); then
        bench proxy 90 --device cuda --steps 120 --random 1 --group 8 --threads 4 --out "$OUT_DIR/bench_proxy.txt"
        bench batched 60 --device cuda --groups 1 4 16 32 --steps 5 --rounds 2 --data "$DATA/cifar10-jpeg" \
            --out "$OUT_DIR/bench_batched.txt"
        bench kd_step 35 --device cuda --rounds 6 --per-round 5 --loss-calls 50 --out "$OUT_DIR/bench_kd_step.txt"
    else
        bench proxy 75 --steps 2 --batch-size 8 --random 0 --presets kd --views 1 --train-per-class 5 \
            --val-per-class 5 --no-bf16 --out "$OUT_DIR/bench_proxy.txt"
        bench batched 50 --groups 1 2 --steps 2 --rounds 1 --batch-size 8 --val-per-class 5 \
            --data "$DATA/cifar10-jpeg" --out "$OUT_DIR/bench_batched.txt"
        bench kd_step 25 --batch-size 8 --rounds 1 --per-round 1 --warmup 1 --loss-calls 5 \
            --out "$OUT_DIR/bench_kd_step.txt"
    fi
fi

# ------------------------------------------------------------------------------------------- 4. search
if (( FAILED == 0 && HAVE_DATA )); then
    RUNS="$SCRATCH/runs"
    rm -rf "$RUNS/gpu-search"
    SEARCH=("$PY" -m kdzero search --config experiments/cifar10jpeg_resnet56a_resnet20.toml --name gpu-search
            --student resnet20a --teacher-ckpt "$DATA/$TEACHER_REL" --dataset "imagefolder:$DATA/cifar10-jpeg"
            --device "$DEV" --group-size auto --runs-dir "$RUNS" --quiet)
    if (( GPU )); then
        limit=$(( $(left) - 15 ))
        (( limit > 190 )) && limit=190
    else
        SEARCH+=(--steps 2 --batch-size 8 --views 1 --train-subset 5 --population 2 --iterations 1)
        limit=$(( $(left) - 5 ))
        (( limit > 30 )) && limit=30
    fi
    say "search: stopped with Ctrl-C (SIGINT) after ${limit}s at the latest"
    began=$(date +%s)
    timeout -s INT -k "$(( GPU ? 20 : 5 ))" "$limit" "${SEARCH[@]}" 2>&1 | tee "$OUT_DIR/search.log"
    rc=${PIPESTATUS[0]}
    wall=$(( $(date +%s) - began ))
    printf '%s\t%s\t%s\t%s\n' search "$rc" "$wall" "$limit" >> "$STEPS"
    [[ -f "$RUNS/gpu-search/study.db" ]] && cp "$RUNS/gpu-search/study.db" "$OUT_DIR/search_study.db"
    # Without a GPU the tiny CPU search may be stopped before its first trial (the teacher's pass over the whole
    # validation split alone takes a minute on a loaded core): no rate then, and no failure.
    "$PY" experiments/gpu_search_timing.py "$RUNS/gpu-search" --wall "$wall" --log "$OUT_DIR/search.log" \
        --json "$OUT_DIR/search_timing.json" || (( ! GPU )) || FAILED=1
    case "$rc" in 0|124|130) ;; *) say "FAILED: the search exited with $rc"; FAILED=1 ;; esac
fi

# ------------------------------------------------------------------------------------------- results.json
"$PY" - "$OUT_DIR" "$GPU" "$FAILED" "$(( $(date +%s) - START ))" <<'EOF'
import json, re, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, gpu, failed, wall = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, limit = line.split("\t")
    steps.append({"step": name, "exit": rc, "seconds": int(seconds), "timeout": int(limit),
                  "timed_out": rc in ("124", "137") and name != "search"})
result = {"gpu": gpu, "failed": failed, "wall_seconds": wall, "steps": steps}
try:
    import torch
    result["torch"] = torch.__version__
    if gpu:
        result["device"] = torch.cuda.get_device_name(0)
except ImportError:
    pass
xml = out / "test_cuda.xml"
if xml.is_file():
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
keep = re.compile(r"ratio|candidates/h|cand/h|projected|best:|one-off|same value|identical|^\s*\d+\s+[\d.]+\s+[\d.]+")
for name in ("bench_proxy", "bench_batched", "bench_kd_step"):
    report = out / f"{name}.txt"
    if report.is_file():
        result[name] = [line for line in report.read_text().splitlines() if keep.search(line)]
timing = out / "search_timing.json"
if timing.is_file():
    result["search"] = json.loads(timing.read_text())
(out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF

(( GPU )) || say "no GPU was present: the CUDA tests were skipped and the timings above are CPU plumbing checks only"
say "done in $(( $(date +%s) - START ))s; results in $OUT_DIR/results.json"
if (( FAILED )); then
    say "FAILED: see the step logs in $OUT_DIR"
    exit 1
fi
exit 0
