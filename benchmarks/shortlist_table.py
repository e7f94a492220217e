"""The shortlist layers' lexical table on a prepared corpus: how long IBM
model 1 takes, how many target tokens each size of shortlist covers, and
how many distinct candidate words a sentence has (U, what the
sentence-shortlist layer's cost grows with).

    python benchmarks/shortlist_table.py                      # runs/multi30k/bin, de-en
    python benchmarks/shortlist_table.py --json benchmarks/results/shortlist-table.json

Coverage is the share of a split's target tokens that are a candidate of
some source word of their sentence: the words the source side can raise at
all (``--output-layer shortlist``, docs/design.md, "Output layers").
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools.experiments import write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "runs", "multi30k", "bin"))
    parser.add_argument("--source-lang", default="de")
    parser.add_argument("--target-lang", default="en")
    parser.add_argument("--sizes", default="8,16,32,64", help="shortlist sizes K to report")
    parser.add_argument("--split", default="valid", help="the split whose coverage is reported")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json", help="also write the numbers here")
    opts = parser.parse_args(argv)

    from fairseq.data import Dictionary, data_utils

    from fairseq_varattn.modules import lexical
    from fairseq_varattn.modules.sentence_shortlist import sentence_words

    src, tgt = opts.source_lang, opts.target_lang
    dicts = [Dictionary.load(os.path.join(opts.data, f"dict.{lang}.txt")) for lang in (src, tgt)]
    sets = {}
    for split in ("train", opts.split):
        loaded = [
            data_utils.load_indexed_dataset(lexical.split_prefix(opts.data, split, src, tgt, lang), d)
            for lang, d in zip((src, tgt), dicts)
        ]
        sets[split] = [(loaded[0][n], loaded[1][n]) for n in range(len(loaded[0]))]
    start = time.perf_counter()
    model1 = lexical.ibm1(sets["train"], len(dicts[1]), opts.iterations)
    seconds = time.perf_counter() - start
    rows = []
    for k in (int(x) for x in opts.sizes.split(",")):
        table = lexical.shortlist_table(*model1, len(dicts[0]), k, dicts[1].pad())
        # U of each sentence, as the layer computes it
        sizes = [
            int(sentence_words(table[source.long()][None], dicts[1].pad())[1].sum()) for source, _ in sets[opts.split]
        ]
        rows.append(
            {
                "k": k,
                "coverage": lexical.coverage(table, sets[opts.split]),
                "sentence_words_mean": sum(sizes) / len(sizes),
                "sentence_words_max": max(sizes),
            }
        )
    print(f"IBM model 1 on {len(sets['train'])} {src}-{tgt} pairs, {opts.iterations} iterations: {seconds:.1f} s")
    print(f"| K | {opts.split} target tokens covered | candidate words per sentence, mean | max |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['k']} | {row['coverage']:.3f} | {row['sentence_words_mean']:.0f} | {row['sentence_words_max']} |"
        )
    if opts.json:
        fields = {"pairs": len(sets["train"]), "ibm1_seconds": round(seconds, 2), "coverage": rows}
        write_result(
            opts.json, "benchmarks/shortlist_table.py", argv if argv is not None else sys.argv[1:], fields, REPO
        )


if __name__ == "__main__":
    main()
