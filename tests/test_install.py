"""The package beside a user's fairseq: its version checked at import, nothing broken installed."""

import importlib.util
import subprocess

import pytest
from helpers import PYTHON, REPO

from fairseq_varattn import compat


@pytest.mark.parametrize("version", ["0.12.2", "0.12.3", "0.13.0"])
def test_a_recent_enough_fairseq_is_accepted(version):
    compat.check_fairseq(version)


@pytest.mark.parametrize("version", ["0.10.2", "0.12.1", "not-a-version"])
def test_an_old_fairseq_is_refused_with_what_to_install(version):
    with pytest.raises(ImportError) as info:
        compat.check_fairseq(version)
    message = str(info.value)
    assert f"found {version}" in message and f">= {compat.MIN_FAIRSEQ}" in message
    assert "fairseq-varattn[fairseq]" in message


def test_import_without_fairseq_says_what_to_install():
    code = "import sys; sys.modules['fairseq'] = None; import fairseq_varattn"
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "fairseq-varattn needs fairseq, which is not installed" in proc.stderr.strip().splitlines()[-1]


def test_every_installed_torch_extension_imports():
    """ve-fairseq pulls in torchaudio, whose newest wheel is built for another torch:
    scripts/setup_venv.sh removes it, so nothing installed fails to import."""
    if importlib.util.find_spec("torchaudio") is not None:
        proc = subprocess.run([PYTHON, "-c", "import torchaudio"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-1000:]


def test_python_requires_matches_the_pinned_fairseq_wheel():
    with open(f"{REPO}/setup.py", encoding="utf-8") as f:
        setup = f.read()
    assert 'python_requires=">=3.11"' in setup and '"fairseq": ["ve-fairseq==0.12.3"]' in setup
