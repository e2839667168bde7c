#!/usr/bin/env bash
# Zero-shot baseline of one encoder on every labelled dataset in ../shared/data (or $XMR_DATA).
#   scripts/eval_zero_shot.sh [ENCODER] [TAG]      default: all-MiniLM-L6-v2 minilm
# Builds exact (Flat) indexes of the label texts as indexes/<dataset>-TAG, runs `xmr eval`, writes
# eval/results/<dataset>-TAG-zeroshot/ and the side-by-side table of every zero-shot run, eval/results/zero-shot.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ENCODER=${1:-all-MiniLM-L6-v2}
TAG=${2:-minilm}
DATA=${XMR_DATA:-../shared/data}
XMR=${XMR:-.venv/bin/xmr}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

$XMR build --labels "$DATA/esco-skill-extraction/labels.jsonl" --encoder "$ENCODER" --out "indexes/esco-$TAG"
$XMR eval "indexes/esco-$TAG" --test "$DATA/esco-skill-extraction/test.jsonl" --group-by subset \
  -k 1 3 5 10 --out "eval/results/esco-$TAG-zeroshot"

$XMR build --labels "$DATA/reuters21578-modapte/labels.jsonl" --encoder "$ENCODER" --out "indexes/reuters-$TAG"
$XMR eval "indexes/reuters-$TAG" --test "$DATA/reuters21578-modapte/test.jsonl" \
  --train "$DATA/reuters21578-modapte/train.jsonl" -k 1 3 5 10 --out "eval/results/reuters-$TAG-zeroshot"

$XMR build --labels "$DATA/coco-mini/labels.jsonl" --encoder "$ENCODER" --out "indexes/coco-mini-$TAG"
$XMR eval "indexes/coco-mini-$TAG" --test "$DATA/coco-mini/test.jsonl" --train "$DATA/coco-mini/train.jsonl" \
  -k 1 3 5 10 --out "eval/results/coco-mini-$TAG-zeroshot"

$XMR eval --compare eval/results/*-zeroshot > eval/results/zero-shot.md
cat eval/results/zero-shot.md
