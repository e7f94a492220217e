from setuptools import find_packages, setup

setup(
    name="fairseq-varattn",
    version="0.1.0",
    description="Latent alignment and variational attention (Deng et al., 2018) as a fairseq plugin",
    packages=find_packages(include=["fairseq_varattn", "fairseq_varattn.*", "varattn_tools", "varattn_tools.*"]),
    license="MIT",
    # the only Python the pinned fairseq wheel (ve-fairseq 0.12.3) exists for
    python_requires=">=3.11",
    install_requires=[
        # fairseq itself is not required here, so that a user's own fairseq (from
        # its main branch) stays; the import checks its version
        # (fairseq_varattn/compat.py).  A fresh environment takes the extra
        # [fairseq]: PyPI's `fairseq` 0.12.2 does not install on Python 3.11 /
        # modern torch, ve-fairseq is a build of fairseq's main branch that
        # imports as `fairseq`.
        "torch>=2.6",
        "packaging",
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.99",
        # fairseq logs "Please install tensorboardX" on every import without
        # it; with it, --tensorboard-logdir works too
        "tensorboardX>=2.6",
    ],
    entry_points={
        "console_scripts": [
            "varattn-prepare = varattn_tools.prepare:main",
            "varattn-align = varattn_tools.align:main",
            "varattn-vqa-data = varattn_tools.vqa_data:main",
            "varattn-vqa-eval = varattn_tools.vqa_eval:main",
            "varattn-train-cpu = varattn_tools.train_cpu:main",
            "varattn-options = varattn_tools.options:main",
            "varattn-word-align = varattn_tools.word_align:main",
            "varattn-symmetrize = varattn_tools.symmetrize:main",
        ],
    },
    extras_require={
        "fairseq": ["ve-fairseq==0.12.3"],
        "test": ["pytest>=7", "pytest-xdist>=3", "ruff==0.17.6"],
        "plot": ["matplotlib>=3.5"],
        "vqa": ["easy-vqa==1.0", "Pillow"],
        # benchmarks/word_alignment.py's yardstick, not a runtime dependency
        "bench": ["eflomal==2.0.0"],
    },
)
