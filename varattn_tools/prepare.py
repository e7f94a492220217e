"""Raw parallel text -> sentencepiece -> fairseq binaries.

    python -m varattn_tools.prepare --raw-dir data/multi30k --out runs/multi30k

reads ``{raw-dir}/{split}.{lang}`` (plain or ``.gz``) for the train / valid /
test split names given, trains one joint sentencepiece model on the training
text of both languages, encodes every split, drops training pairs that are
empty or longer than ``--max-len`` pieces (saying how many), and runs
``fairseq-preprocess`` with a joined dictionary into ``{out}/bin``.  It reads
local files only.  For IWSLT14 De-En prepared by fairseq's
``prepare-iwslt14.sh`` (use its tokenised, pre-BPE ``tmp/`` files), pass
``--train train --valid valid --test test --vocab-size 14000``.
"""

import argparse
import gzip
import logging
import os
import shutil
import subprocess
import sys

logger = logging.getLogger("varattn_tools.prepare")


def open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def find_split(raw_dir, split, lang):
    for candidate in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        path = os.path.join(raw_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"no {split}.{lang} or {split}.{lang}.gz in {raw_dir!r}: "
        f"expected files named SPLIT.LANG for splits/languages given by --train/--valid/--test, --src/--tgt"
    )


def read_lines(path):
    with open_text(path) as f:
        return [line.rstrip("\n").strip() for line in f]


def read_pair(raw_dir, split, src, tgt):
    src_lines = read_lines(find_split(raw_dir, split, src))
    tgt_lines = read_lines(find_split(raw_dir, split, tgt))
    if len(src_lines) != len(tgt_lines):
        raise ValueError(
            f"{split}: {len(src_lines)} {src} lines but {len(tgt_lines)} {tgt} lines; "
            "line i of one side must translate line i of the other"
        )
    return src_lines, tgt_lines


def train_sentencepiece(texts, prefix, vocab_size, model_type):
    import sentencepiece as spm

    corpus = prefix + ".corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        for line in texts:
            if line:
                f.write(line + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        num_threads=2,
        minloglevel=2,
        # fairseq's dictionary adds its own <s>, <pad>, </s>, <unk>.
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
    )
    os.remove(corpus)
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", required=True, help="folder of SPLIT.LANG[.gz] files")
    parser.add_argument("--out", required=True, help="output folder (binaries in OUT/bin)")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--train", default="train")
    parser.add_argument("--valid", default="val")
    parser.add_argument(
        "--test",
        default="test_2016_flickr",
        help="comma-separated test split names; the first becomes fairseq's 'test'",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=8000, help="joint sentencepiece vocabulary (8000 suits Multi30k's 29k pairs)"
    )
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    parser.add_argument(
        "--max-len", type=int, default=125, help="drop training pairs with a side longer than this many pieces"
    )
    parser.add_argument(
        "--train-limit", type=int, default=0, help="keep only the first N training pairs (0 = all; for tests)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout
    )

    if not os.path.isdir(args.raw_dir):
        parser.error(f"--raw-dir {args.raw_dir!r} is not a directory")
    tests = [t for t in args.test.split(",") if t]
    splits = {"train": args.train, "valid": args.valid}
    for i, name in enumerate(tests):
        splits["test" if i == 0 else f"test{i}"] = name
    data = {key: read_pair(args.raw_dir, name, args.src, args.tgt) for key, name in splits.items()}
    if args.train_limit > 0:
        data["train"] = tuple(side[: args.train_limit] for side in data["train"])

    spm_dir = os.path.join(args.out, "spm")
    os.makedirs(spm_dir, exist_ok=True)
    sp = train_sentencepiece(
        data["train"][0] + data["train"][1], os.path.join(args.out, "spm"), args.vocab_size, args.model_type
    )
    logger.info(
        "sentencepiece %s model, %d pieces: %s",
        args.model_type,
        sp.get_piece_size(),
        os.path.join(args.out, "spm.model"),
    )

    for key, (src_lines, tgt_lines) in data.items():
        src_enc = [" ".join(sp.encode(s, out_type=str)) for s in src_lines]
        tgt_enc = [" ".join(sp.encode(t, out_type=str)) for t in tgt_lines]
        keep = range(len(src_enc))
        if key == "train":
            empty = [i for i in keep if not src_enc[i] or not tgt_enc[i]]
            long = [
                i
                for i in keep
                if src_enc[i] and tgt_enc[i] and max(len(src_enc[i].split()), len(tgt_enc[i].split())) > args.max_len
            ]
            dropped = set(empty) | set(long)
            keep = [i for i in keep if i not in dropped]
            logger.info(
                "train: kept %d of %d pairs (dropped %d with an empty side, %d longer than %d pieces)",
                len(keep),
                len(src_enc),
                len(empty),
                len(long),
                args.max_len,
            )
        for lang, lines in ((args.src, src_enc), (args.tgt, tgt_enc)):
            with open(os.path.join(spm_dir, f"{key}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(lines[i] + "\n" for i in keep)

    final = os.path.join(args.out, "bin")
    partial = final + ".partial"
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.preprocess",
        "--source-lang",
        args.src,
        "--target-lang",
        args.tgt,
        "--trainpref",
        os.path.join(spm_dir, "train"),
        "--validpref",
        os.path.join(spm_dir, "valid"),
        "--testpref",
        ",".join(os.path.join(spm_dir, k) for k in splits if k.startswith("test")),
        "--destdir",
        partial,
        "--joined-dictionary",
        "--workers",
        str(args.workers),
    ]
    logger.info("running %s", " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"fairseq-preprocess failed; {final} was left as it was")
    # binaries appear under their final name only once all of them are written
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(partial, final)
    logger.info("done: fairseq data in %s", final)


if __name__ == "__main__":
    main()
