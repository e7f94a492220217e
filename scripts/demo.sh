#!/usr/bin/env bash
# The main job: prepare the shipped Multi30k De-En corpus, train a small
# soft-attention varattn_lstm, translate the 2016 Flickr test set with beam
# search and score it with sacrebleu (signature printed).  A few minutes on
# 2 CPU cores.  Knobs: MAX_EPOCH, OUT, and EXTRA_TRAIN_ARGS (e.g.
# "--attention categorical --criterion varattn_marginal" -- slower on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup_venv.sh
PY=.venv/bin/python
OUT=${OUT:-runs/demo}
DATA=${DATA:-runs/multi30k}
MAX_EPOCH=${MAX_EPOCH:-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# keep freed memory in the heap: large temporaries are not page-faulted in anew
# at every step (varattn_tools/experiments.py, HEAP_MALLOC)
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-2000000000}

if [ ! -f "$DATA/bin/dict.en.txt" ]; then
  echo "== preparing data/multi30k -> $DATA (sentencepiece 8k joint vocabulary)"
  $PY -m varattn_tools.prepare --raw-dir data/multi30k --out "$DATA"
fi

echo "== training varattn_lstm (soft attention), $MAX_EPOCH epochs"
rm -rf "$OUT"
mkdir -p "$OUT"
.venv/bin/fairseq-train "$DATA/bin" --user-dir fairseq_varattn \
  --arch varattn_lstm --encoder-embed-dim 128 --encoder-hidden-size 128 \
  --decoder-embed-dim 128 --decoder-hidden-size 256 --decoder-out-embed-dim 128 \
  --dropout 0.2 --criterion cross_entropy ${EXTRA_TRAIN_ARGS:-} \
  --optimizer adam --lr 0.005 --clip-norm 5 --max-tokens 1500 \
  --max-epoch "$MAX_EPOCH" --seed 1 --num-workers 0 --log-interval 50 \
  --save-dir "$OUT/checkpoints" --no-epoch-checkpoints --required-batch-size-multiple 1 \
  2>&1 | tee "$OUT/train.log"

echo "== translating test_2016_flickr (beam 5)"
# fairseq-generate's log (and sacrebleu's tokenisation warnings on pieces) go to a file:
# the one score printed is sacrebleu's on the detokenised output against the raw reference
.venv/bin/fairseq-generate "$DATA/bin" --user-dir fairseq_varattn \
  --path "$OUT/checkpoints/checkpoint_best.pt" --gen-subset test \
  --beam 5 --batch-size 128 --post-process sentencepiece \
  --required-batch-size-multiple 1 > "$OUT/generate-test.txt" 2> "$OUT/generate-test.log"
grep '^D-' "$OUT/generate-test.txt" | sed 's/^D-//' | sort -n -k1,1 | cut -f3 > "$OUT/hyp.txt"
gunzip -c data/multi30k/test_2016_flickr.en.gz > "$OUT/ref.txt"
echo "== sacreBLEU against data/multi30k/test_2016_flickr.en"
.venv/bin/sacrebleu "$OUT/ref.txt" -i "$OUT/hyp.txt" -m bleu -f text | tee "$OUT/bleu.txt"

# a model directory in fairseq's layout for released models, for fairseq-interactive
# and fairseq_varattn.hub.from_pretrained: checkpoint, dictionaries, sentencepiece model
mkdir -p "$OUT/model"
cp "$OUT/checkpoints/checkpoint_best.pt" "$DATA"/bin/dict.*.txt "$OUT/model/"
cp "$DATA/spm.model" "$OUT/model/sentencepiece.bpe.model"
echo "== fairseq-interactive on raw text (H: pieces, D: detokenised, A: source-target word-piece links)"
echo "Zwei Hunde spielen im Schnee." | .venv/bin/fairseq-interactive "$OUT/model" --user-dir fairseq_varattn \
  --path "$OUT/model/checkpoint_best.pt" --source-lang de --target-lang en \
  --bpe sentencepiece --sentencepiece-model "$OUT/model/sentencepiece.bpe.model" \
  --beam 5 --print-alignment 2>/dev/null | grep -E '^(S|H|D|A)-' | tee "$OUT/interactive.txt"

seconds=$(( $(date +%s) - start ))
$PY scripts/demo_result.py --out "$OUT" --epochs "$MAX_EPOCH" --seconds "$seconds" \
  --extra-train-args "${EXTRA_TRAIN_ARGS:-}"
echo "== done in $seconds s; outputs in $OUT (model directory: $OUT/model)"
