#!/usr/bin/env bash
# Zero-shot baseline: the bundled MiniLM on every labelled dataset in ../shared/data (or $XMR_DATA).
# Builds exact (Flat) indexes of the label texts, runs `xmr eval`, and writes eval/results/<dataset>-minilm-zeroshot/
# plus the side-by-side table eval/results/zero-shot.md. Later issues compare their runs against these.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${XMR_DATA:-../shared/data}
XMR=${XMR:-.venv/bin/xmr}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

$XMR build --labels "$DATA/esco-skill-extraction/labels.jsonl" --out indexes/esco-minilm
$XMR eval indexes/esco-minilm --test "$DATA/esco-skill-extraction/test.jsonl" --group-by subset \
  -k 1 3 5 10 --out eval/results/esco-minilm-zeroshot

$XMR build --labels "$DATA/reuters21578-modapte/labels.jsonl" --out indexes/reuters-minilm
$XMR eval indexes/reuters-minilm --test "$DATA/reuters21578-modapte/test.jsonl" \
  --train "$DATA/reuters21578-modapte/train.jsonl" -k 1 3 5 10 --out eval/results/reuters-minilm-zeroshot

$XMR build --labels "$DATA/coco-mini/labels.jsonl" --out indexes/coco-mini-minilm
$XMR eval indexes/coco-mini-minilm --test "$DATA/coco-mini/test.jsonl" --train "$DATA/coco-mini/train.jsonl" \
  -k 1 3 5 10 --out eval/results/coco-mini-minilm-zeroshot

$XMR eval --compare eval/results/esco-minilm-zeroshot eval/results/reuters-minilm-zeroshot \
  eval/results/coco-mini-minilm-zeroshot > eval/results/zero-shot.md
cat eval/results/zero-shot.md
