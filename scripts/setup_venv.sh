#!/usr/bin/env bash
# Creates .venv (or $VENV) and installs the plugin with pinned versions; a
# no-op when setup.py and constraints.txt are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.installed-$(cat setup.py constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== installing into $VENV (torch and fairseq pinned by constraints.txt)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test,plot,vqa]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
