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
  # pip's and setuptools' chatter goes to a log, shown only if the install fails
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test,plot,vqa]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "installation failed (log: $log)" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
