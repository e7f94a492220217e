"""Combine the word alignments of two translation directions, as alignment users expect.

    varattn-symmetrize de-en.align en-de.align --method grow-diag-final-and > sym.align

``FORWARD`` has links ``i-j`` (source word i, target word j) of a model
translating source to target; ``REVERSE`` those of the model translating
back, ``j-i`` in its own order, which are flipped before combining.  Methods:
``intersection``, ``union`` and ``grow-diag-final-and`` (the heuristic of
Koehn et al. 2005): start from the intersection, add neighbouring union links
(also diagonal) that align a word not yet aligned until none is left, then
each direction's links whose two words are both still unaligned.
"""

import argparse
import sys
from typing import List, Set, Tuple

Links = Set[Tuple[int, int]]
METHODS = ("intersection", "union", "grow-diag-final-and")
NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def parse(line: str) -> Links:
    links = set()
    for item in line.split():
        i, j = item.split(":")[0].split("-")
        links.add((int(i), int(j)))
    return links


def grow_diag_final_and(forward: Links, reverse: Links) -> Links:
    union = forward | reverse
    alignment = set(forward & reverse)
    aligned_src = {i for i, _ in alignment}
    aligned_tgt = {j for _, j in alignment}

    def add(link):
        alignment.add(link)
        aligned_src.add(link[0])
        aligned_tgt.add(link[1])

    grew = True
    while grew:  # grow-diag: neighbours of current links that align a new word
        grew = False
        for i, j in sorted(alignment):
            for di, dj in NEIGHBOURS:
                link = (i + di, j + dj)
                if (
                    link in union
                    and link not in alignment
                    and (link[0] not in aligned_src or link[1] not in aligned_tgt)
                ):
                    add(link)
                    grew = True
    for direction in (forward, reverse):  # final-and: both words still unaligned
        for link in sorted(direction):
            if link not in alignment and link[0] not in aligned_src and link[1] not in aligned_tgt:
                add(link)
    return alignment


def symmetrize(forward: Links, reverse_flipped: Links, method: str) -> Links:
    if method == "intersection":
        return forward & reverse_flipped
    if method == "union":
        return forward | reverse_flipped
    if method == "grow-diag-final-and":
        return grow_diag_final_and(forward, reverse_flipped)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def flip(links: Links) -> Links:
    return {(j, i) for i, j in links}


def format_links(links: Links) -> str:
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def symmetrize_lines(forward: List[str], reverse: List[str], method: str) -> List[str]:
    if len(forward) != len(reverse):
        raise ValueError(f"{len(forward)} forward lines but {len(reverse)} reverse lines")
    return [format_links(symmetrize(parse(f), flip(parse(r)), method)) for f, r in zip(forward, reverse)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("forward", help="Pharaoh links of the source-to-target model")
    parser.add_argument("reverse", help="Pharaoh links of the target-to-source model (its own order)")
    parser.add_argument("--method", choices=METHODS, default="grow-diag-final-and")
    opts = parser.parse_args(argv)
    with open(opts.forward, encoding="utf-8") as f, open(opts.reverse, encoding="utf-8") as r:
        forward, reverse = f.read().splitlines(), r.read().splitlines()
    try:
        lines = symmetrize_lines(forward, reverse, opts.method)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
