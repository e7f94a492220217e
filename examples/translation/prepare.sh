#!/usr/bin/env bash
# Usage: examples/translation/prepare.sh RAW_DIR OUT_DIR [extra prepare_data options]
# RAW_DIR holds SPLIT.LANG[.gz] files; defaults fit the shipped Multi30k
# (train / val / test_2016_flickr, de -> en, 8k joint sentencepiece).
# IWSLT14 De-En: examples/translation/prepare.sh DIR OUT --train train --valid valid --test test --vocab-size 14000
set -euo pipefail
RAW=${1:?raw dir}; OUT=${2:?out dir}; shift 2
exec python -m varattn_tools.prepare --raw-dir "$RAW" --out "$OUT" "$@"
