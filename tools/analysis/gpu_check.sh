#!/usr/bin/env bash
# The GPU check: one command for a lent GPU machine with no package registry, at most 6 minutes on an H100 with
# cold imports. It installs wheelhouse/ (bash tools/analysis/make_wheelhouse.sh, run where a registry is reachable)
# into a scratch folder beside the machine's own torch, torchvision and numpy, then runs the five parts of
# tools/analysis/gpu_check.py in order of value, each under its own time limit, each writing
# OUT_DIR/<n>_<part>.json as it ends. Everything printed also goes to OUT_DIR/log.txt. The last line says which
# parts passed, which ran, and how many targets were met.
#
# Usage: bash tools/analysis/gpu_check.sh OUT_DIR [--device cuda|cpu] [--tiny]
#   PYTHON: the interpreter (default python3). WHEELHOUSE: the wheels (default wheelhouse/).
#   GPU_CHECK_TIME_SCALE: multiplies every time limit (a CPU rehearsal, --device cpu --tiny, on a slow machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
usage="usage: bash tools/analysis/gpu_check.sh OUT_DIR [--device cuda|cpu] [--tiny]"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "$usage" >&2; exit 2; }
out=$1
shift
device=cuda
tiny=()
while [ $# -gt 0 ]; do
  case $1 in
    --device) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; device=$2; shift 2 ;;
    --tiny) tiny=(--tiny); shift ;;
    *) echo "gpu_check: unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
wheelhouse=${WHEELHOUSE:-wheelhouse}
scale=${GPU_CHECK_TIME_SCALE:-1}
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS
exec > >(tee -a "$out/log.txt") 2>&1

# What the machine must bring itself: one line naming whatever is missing.
if ! "$python" -c "
import importlib.util, sys
names = {'torch': 'torch', 'torchvision': 'torchvision', 'numpy': 'numpy', 'cv2': 'opencv-python-headless',
         'yaml': 'pyyaml', 'PIL': 'pillow', 'matplotlib': 'matplotlib', 'scipy': 'scipy', 'regex': 'regex',
         'rich': 'rich', 'packaging': 'packaging'}
missing = [f'{m} ({p})' for m, p in names.items() if importlib.util.find_spec(m) is None]
if missing:
    sys.exit('gpu_check: $python lacks ' + ', '.join(missing) + ': install them there (carry their wheels), then rerun')
"; then
  exit 1
fi

# The OpenMMLab stack and timm from the wheelhouse, into a scratch folder put on PYTHONPATH after the repository.
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
if compgen -G "$wheelhouse/*.whl" > /dev/null; then
  "$python" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$site" \
    "$wheelhouse"/*.whl || { echo "gpu_check: installing $wheelhouse/*.whl failed (above)" >&2; exit 1; }
elif "$python" -c "import mmseg, mmengine, mmcv, timm" 2> /dev/null; then
  echo "gpu_check: no $wheelhouse/; using the OpenMMLab stack $python already has"
else
  echo "gpu_check: no $wheelhouse/ and $python has no mmseg/mmengine/mmcv/timm: run bash tools/analysis/make_wheelhouse.sh" \
    "where a package registry is reachable, and carry wheelhouse/ to this machine" >&2
  exit 1
fi
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# A part killed at its limit keeps what it reported so far, marked as timed out.
mark_timed_out() {
  "$python" -c "
import json, os, sys
path, part, limit = sys.argv[1:]
result = json.load(open(path)) if os.path.isfile(path) else {'part': part}
result.update(passed=False, ran=False, error=f'timed out after {limit} s (results above are what it reported by then)')
json.dump(result, open(path, 'w'), indent=1)
" "$1" "$2" "$3"
}

# run_part NUMBER PART SECONDS: the part under `timeout`, told its budget so it can skip what would not fit.
run_part() {
  local limit=$(($3 * scale))
  timeout -k 10 "$limit" "$python" tools/analysis/gpu_check.py "$2" --out "$out" --device "$device" \
    "${tiny[@]}" --budget $((limit - 10 * scale))
  local status=$?
  if [ $status -eq 124 ] || [ $status -eq 137 ]; then
    echo "$2: timed out after $limit s"
    mark_timed_out "$out/$1_$2.json" "$2" "$limit"
  fi
}

total=$((360 * scale))
run_part 1 environment 20
run_part 2 selection 25
run_part 3 training 165
run_part 4 runner 100
left=$((total - (SECONDS - start)))
if [ $left -ge $((40 * scale)) ]; then
  run_part 5 sam $((left / scale))
else
  "$python" -c "
import json, sys
json.dump({'part': 'sam', 'passed': None, 'ran': False, 'met': None,
           'skipped': f'{sys.argv[2]} s left of the check: SAM-L not run'},
          open(sys.argv[1], 'w'), indent=1)" "$out/5_sam.json" "$left"
fi

"$python" -c "
import glob, json, os, sys
parts, ran, targets = {}, [], []
for path in sorted(glob.glob(os.path.join(sys.argv[1], '[1-5]_*.json'))):
    result = json.load(open(path))
    part = result.get('part', path)
    parts[part] = result.get('passed')
    ran += [part] if result.get('ran') else []
    targets += result.get('targets', [])
passed = [p for p, ok in parts.items() if ok]
failed = [p for p, ok in parts.items() if ok is False]
skipped = [p for p, ok in parts.items() if ok is None]
missing = [p for p in ('environment', 'selection', 'training', 'runner', 'sam') if p not in parts]
missed = [t['name'] for t in targets if not t['met']]
print(f'gpu_check: passed {\" \".join(passed) or \"-\"}; failed {\" \".join(failed + missing) or \"-\"}; '
      f'skipped {\" \".join(skipped) or \"-\"}; ran {\" \".join(ran) or \"-\"}; '
      f'{len(targets) - len(missed)} of {len(targets)} targets met{\" (missed: \" + \", \".join(missed) + \")\" if missed else \"\"}; '
      f'{sys.argv[2]} s; JSON and log.txt in {sys.argv[1]}')
sys.exit(1 if failed or missing else 0)
" "$out" "$((SECONDS - start))"
