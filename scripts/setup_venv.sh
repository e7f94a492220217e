#!/usr/bin/env bash
# Creates .venv (or $VENV) and installs the plugin with pinned versions; a
# no-op when setup.py and constraints.txt are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# ve-fairseq requires torchaudio, and the newest torchaudio (2.11.1) is built
# for another torch: it installs but fails to import.  fairseq imports it only
# for speech tasks (and then says "Please install torchaudio"), so it is removed.
remove_torchaudio() { "$VENV/bin/python" -m pip uninstall -q -y torchaudio; }
stamp="$VENV/.installed-$(cat setup.py constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== installing into $VENV (torch and fairseq pinned by constraints.txt)"
  "$PYTHON" -m venv "$VENV"
  # pip's and setuptools' chatter goes to a log, shown only if the install fails
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[fairseq,test,plot,vqa,bench]" &&
         remove_torchaudio; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "installation failed (log: $log)" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
