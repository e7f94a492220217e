import gzip
import os

import pytest
from helpers import REPO, run_cli  # pytest puts tests/ on sys.path; the package is installed


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long real-data runs (run with -m slow)")


EVAL_LINES = 100


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The shipped corpus: 2,000 training pairs, the first 200 val / test pairs."""
    raw = tmp_path_factory.mktemp("raw")
    for split, limit in (("train", 2000), ("val", EVAL_LINES), ("test_2016_flickr", EVAL_LINES)):
        for lang in ("de", "en"):
            with gzip.open(os.path.join(REPO, "data", "multi30k", f"{split}.{lang}.gz"), "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()[:limit]
            (raw / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("multi30k")
    run_cli(["varattn_tools.prepare", "--raw-dir", raw, "--out", out, "--vocab-size", "800", "--workers", "1"])
    return str(out / "bin")
