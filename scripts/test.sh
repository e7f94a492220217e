#!/usr/bin/env bash
# The test command: installs what it needs, lints the tree, then runs the default suite
# (long real-data runs are behind `-m slow`) on PYTEST_WORKERS processes
# (default 2: most tests wait on single-threaded fairseq subprocesses).
# Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh || exit 1
# the linter and the formatter first (ruff.toml): a style error fails the run as a test would
.venv/bin/ruff check . || { echo "ruff found problems (ruff check . --fix fixes some)" >&2; exit 1; }
.venv/bin/ruff format --check . || { echo "ruff format would change the files above (run: .venv/bin/ruff format .)" >&2; exit 1; }
.venv/bin/python -m pytest tests -q -ra -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $rc
