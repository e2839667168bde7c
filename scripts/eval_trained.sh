#!/usr/bin/env bash
# Test-split results of the training recipes, before (zero-shot, same encoder settings) and after fine-tuning.
#   scripts/eval_trained.sh reuters     # after `xmr train training/reuters-minilm.yaml`
#   scripts/eval_trained.sh esco        # after scripts/prepare_esco_pairs.py + `xmr train training/esco-minilm.yaml`
#   scripts/eval_trained.sh esco-labelvectors   # after `xmr train training/esco-labelvectors.yaml`
# Writes eval/results/<run>/ folders and the before/after table eval/results/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${XMR_DATA:-../shared/data}
XMR=${XMR:-.venv/bin/xmr}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

case "${1:?reuters, esco or esco-labelvectors}" in
reuters)
  R="$DATA/reuters21578-modapte"
  EVAL=(--test "$R/test.jsonl" --train "$R/train.jsonl" -k 1 3 5 10)
  $XMR build --labels "$R/labels.jsonl" --encoder all-MiniLM-L6-v2 --max-seq-length 128 --out indexes/reuters-minilm128
  $XMR eval indexes/reuters-minilm128 "${EVAL[@]}" --out eval/results/reuters-minilm128-zeroshot
  $XMR build --labels "$R/labels.jsonl" --encoder runs/reuters-minilm/encoder --out indexes/reuters-minilm-finetuned
  $XMR eval indexes/reuters-minilm-finetuned "${EVAL[@]}" --out eval/results/reuters-minilm-finetuned
  $XMR eval runs/reuters-minilm/index "${EVAL[@]}" --out eval/results/reuters-minilm-finetuned-centroids
  ;;
esco)
  E="$DATA/esco-skill-extraction"
  $XMR build --labels "$E/labels.jsonl" --encoder runs/esco-minilm/encoder --out indexes/esco-minilm-finetuned
  $XMR eval indexes/esco-minilm-finetuned --test "$E/test.jsonl" --group-by subset -k 1 3 5 10 \
    --out eval/results/esco-minilm-finetuned
  ;;
esco-labelvectors)
  E="$DATA/esco-skill-extraction"
  $XMR eval runs/esco-labelvectors/index --test "$E/test.jsonl" --group-by subset -k 1 3 5 10 \
    --out eval/results/esco-minilm-labelvectors
  ;;
*) echo "usage: $0 reuters|esco|esco-labelvectors" >&2; exit 2 ;;
esac

RUNS=()
for run in reuters-minilm128-zeroshot reuters-minilm-finetuned reuters-minilm-finetuned-centroids \
           esco-minilm-zeroshot esco-minilm-finetuned esco-minilm-labelvectors; do
  [ -f "eval/results/$run/metrics.json" ] && RUNS+=("eval/results/$run")
done
$XMR eval --compare "${RUNS[@]}" > eval/results/training.md
cat eval/results/training.md
