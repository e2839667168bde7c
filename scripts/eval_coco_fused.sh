#!/usr/bin/env bash
# The multi-modal path end to end on real images: fused (text + image) encoders over coco-mini, queried with
# text+image, image only and text only. The image towers and projections are UNTRAINED (no pretrained CLIP/SigLIP
# weights can be had offline), so these numbers show the mechanism runs, not what a trained ViXML model reaches.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${XMR_DATA:-../shared/data}
XMR=${XMR:-.venv/bin/xmr}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

for NAME in fused-minilm-vitb32-untrained fused-smollm2-vitb32-untrained; do
  $XMR build --labels "$DATA/coco-mini/labels.jsonl" --encoder "eval/encoders/$NAME.json" --out "indexes/coco-mini-$NAME"
  for MODALITY in all image text; do
    $XMR eval "indexes/coco-mini-$NAME" --test "$DATA/coco-mini/test.jsonl" --train "$DATA/coco-mini/train.jsonl" \
      --modality "$MODALITY" -k 1 3 5 10 --out "eval/results/coco-mini-$NAME-$MODALITY"
  done
done
$XMR eval --compare eval/results/coco-mini-*-zeroshot eval/results/coco-mini-fused-* > eval/results/coco-mini-fused.md
cat eval/results/coco-mini-fused.md
