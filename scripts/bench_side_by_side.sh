#!/usr/bin/env bash
# rcaflow against PyTorch, model by model, on the same cores in the same session: for each model
# `rcaflow bench` and then scripts/bench_torch.py run back to back (so a change in the machine's
# load between models hits both columns alike), `ROUNDS` times, each model's median kept per
# round; then one table of both columns, their ratio and its range over the rounds.
#
#   cargo build --release
#   PYTHONPATH=/path/to/site scripts/bench_side_by_side.sh [--threads N] [--repeats N] [--models a,b]
#
# Environment: RCAFLOW (default target/release/rcaflow), PYTHON (python3), ROUNDS (3), OUT (a
# fresh temporary folder: the JSON reports of every run stay there). Run by hand, never in CI;
# it needs torch, torchvision, diffusers, pytorch-fid and lpips on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

RCAFLOW=${RCAFLOW:-target/release/rcaflow}
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
THREADS=$(nproc)
REPEATS=5
MODELS=unet,inception,resnet18,resnet34,lpips-alex,lpips-vgg
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        *) echo "error: unknown option \"$1\"; expected --threads N, --repeats N or --models a,b" >&2; exit 2 ;;
    esac
done
[ -x "$RCAFLOW" ] || { echo "error: $RCAFLOW is not an executable; build it with cargo build --release or set RCAFLOW" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "$THREADS threads, $REPEATS repeats, $ROUNDS rounds; reports in $OUT" >&2
for round in $(seq 1 "$ROUNDS"); do
    for model in ${MODELS//,/ }; do
        echo "round $round/$ROUNDS: $model" >&2
        "$RCAFLOW" --threads "$THREADS" --log-level warn bench --models "$model" --repeats "$REPEATS" --json > "$OUT/rcaflow-$model-$round.json"
        "$PYTHON" scripts/bench_torch.py --threads "$THREADS" --models "$model" --repeats "$REPEATS" --json > "$OUT/torch-$model-$round.json"
    done
done
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PYTHON" - "$OUT" "$ROUNDS" "$MODELS" <<'EOF'
import json, statistics, sys
out, rounds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
def result(side, model, r):
    return json.load(open(f"{out}/{side}-{model}-{r}.json"))["results"][0]
print("| model | batch | PyTorch | rcaflow | rcaflow / torch (median of rounds, min-max) | peak RSS torch / rcaflow |")
print("|---|---|---|---|---|---|")
for m in models:
    ours = [result("rcaflow", m, r) for r in range(1, rounds + 1)]
    theirs = [result("torch", m, r) for r in range(1, rounds + 1)]
    a = [o["throughput"]["median"] for o in ours]
    b = [t["throughput"]["median"] for t in theirs]
    ratios = [x / y for x, y in zip(a, b)]
    rss = lambda rs: "-" if rs[-1]["peak_rss_mib"] is None else f"{rs[-1]['peak_rss_mib']:.0f}"
    print(f"| {m} | {ours[0]['batch']} | {statistics.median(b):.2f} {theirs[0]['unit']} | {statistics.median(a):.2f} {ours[0]['unit']} "
          f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {rss(theirs)} / {rss(ours)} MiB |")
EOF
