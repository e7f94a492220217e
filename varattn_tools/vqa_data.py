"""Build VQA data dirs for ``--task varattn_vqa`` (layout: fairseq_varattn/data/vqa.py).

    python -m varattn_tools.vqa_data easy-vqa --out runs/easy-vqa     # the shipped set
    python -m varattn_tools.vqa_data vocab DATA [--min-answer-count 9]
    python -m varattn_tools.vqa_data from-tsv FEATURES.tsv --out DATA/features

``easy-vqa`` converts the easy-VQA package (PyPI ``easy-vqa`` 1.0, MIT;
installed with the ``vqa`` extra, read from disk, never downloaded) into the
VQA v2 layout.  Regions are the cells of a G x G grid over each 64 x 64
image (``--grid``, default 4: 16 cells of 16 x 16 pixels); a cell's
features are its pixels average-pooled to 4 x 4 RGB plus its mean and
standard deviation per channel, scaled to [0, 1] (54 numbers; no learned or
pretrained encoder, none is available offline).  The last ``--valid-images``
training images (by id) and their questions become ``valid``; easy-VQA's
test set becomes ``test`` (image ids + 100000, so one features folder serves
every split).  Each image holds one shape on a plain background, so the
gold region (the cell with most shape pixels) goes to gold_regions.json.

``from-tsv`` converts the bottom-up-attention tsv form (image_id, image_w,
image_h, num_boxes, boxes, features: base64 float32 num_boxes x D) into one
IMAGE_ID.npy per image.
"""

import argparse
import base64
import csv
import json
import logging
import os
import sys

import numpy as np

from fairseq_varattn.data.vqa import build_vocabularies

logger = logging.getLogger("varattn_tools.vqa_data")

TEST_IMAGE_OFFSET = 100_000
COLORS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
SHAPES = {"circle", "rectangle", "triangle"}


def answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    return "other"


def grid_features(image: np.ndarray, grid: int):
    """(H, W, 3) uint8 -> (grid^2, 54) float32 cell features, gold cell index."""
    h, w, _ = image.shape
    if h % grid or w % grid or (h // grid) % 4 or (w // grid) % 4:
        raise ValueError(f"a {h}x{w} image does not split into {grid}x{grid} cells of 4k x 4k pixels")
    x = image.astype(np.float32) / 255.0
    ch, cw = h // grid, w // grid
    cells = x.reshape(grid, ch, grid, cw, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, ch, cw, 3)
    pooled = cells.reshape(grid * grid, 4, ch // 4, 4, cw // 4, 3).mean(axis=(2, 4)).reshape(grid * grid, -1)
    stats = np.concatenate([cells.mean(axis=(1, 2)), cells.std(axis=(1, 2))], axis=1)
    # plain background: pixels far from the corner colour belong to the shape
    foreground = np.abs(image.astype(np.int32) - image[0, 0].astype(np.int32)).sum(-1) > 40
    per_cell = foreground.reshape(grid, ch, grid, cw).sum(axis=(1, 3)).reshape(-1)
    return np.concatenate([pooled, stats], axis=1).astype(np.float32), int(per_cell.argmax())


def write_split(out, split, rows, offset):
    """rows: (question, answer, image_id) -> VQA v2 questions/annotations json."""
    questions, annotations = [], []
    for i, (question, answer, image_id) in enumerate(rows):
        qid = offset + i
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answers": [{"answer": answer, "answer_id": k + 1} for k in range(10)],
                "multiple_choice_answer": answer,
                "answer_type": answer_type(answer),
            }
        )
    with open(os.path.join(out, f"{split}_questions.json"), "w") as f:
        json.dump({"questions": questions}, f)
    with open(os.path.join(out, f"{split}_annotations.json"), "w") as f:
        json.dump({"annotations": annotations}, f)
    logger.info("%s: %d questions", split, len(rows))


def easy_vqa(args):
    try:
        import easy_vqa as ev
    except ImportError:
        sys.exit("easy-vqa is not installed: pip install -e '.[vqa]' (it ships its data; nothing is downloaded)")
    from PIL import Image

    os.makedirs(os.path.join(args.out, "features"), exist_ok=True)
    gold = {}
    for name, paths, offset in (
        ("train", ev.get_train_image_paths(), 0),
        ("test", ev.get_test_image_paths(), TEST_IMAGE_OFFSET),
    ):
        for image_id, path in sorted(paths.items()):
            features, cell = grid_features(np.array(Image.open(path).convert("RGB")), args.grid)
            np.save(os.path.join(args.out, "features", f"{image_id + offset}.npy"), features)
            gold[str(image_id + offset)] = cell
        logger.info("%s: %d images -> %d regions each", name, len(paths), args.grid**2)
    with open(os.path.join(args.out, "gold_regions.json"), "w") as f:
        json.dump(gold, f)

    train_q, train_a, train_i = ev.get_train_questions()
    valid_from = max(ev.get_train_image_paths()) + 1 - args.valid_images
    train = [(q, a, i) for q, a, i in zip(train_q, train_a, train_i) if i < valid_from]
    valid = [(q, a, i) for q, a, i in zip(train_q, train_a, train_i) if i >= valid_from]
    test = [(q, a, i + TEST_IMAGE_OFFSET) for q, a, i in zip(*ev.get_test_questions())]
    write_split(args.out, "train", train, 0)
    write_split(args.out, "valid", valid, 1_000_000)
    write_split(args.out, "test", test, 2_000_000)
    build_vocabularies(args.out, "train", min_answer_count=1)


def from_tsv(args):
    csv.field_size_limit(sys.maxsize)
    os.makedirs(args.out, exist_ok=True)
    fields = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
    count = 0
    with open(args.tsv, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", fieldnames=fields):
            boxes = int(row["num_boxes"])
            data = np.frombuffer(base64.b64decode(row["features"]), dtype=np.float32)
            if data.size % boxes:
                raise ValueError(f"image {row['image_id']}: {data.size} floats do not split into {boxes} boxes")
            np.save(os.path.join(args.out, f"{row['image_id']}.npy"), data.reshape(boxes, -1))
            count += 1
    logger.info("wrote %d feature files to %s", count, args.out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("easy-vqa", help="convert the shipped easy-VQA set")
    p.add_argument("--out", required=True)
    p.add_argument("--grid", type=int, default=4, help="G x G grid cells as regions")
    p.add_argument("--valid-images", type=int, default=500, help="training images held out as valid")
    p = sub.add_parser("vocab", help="write dict.txt and answers.txt from a split")
    p.add_argument("data")
    p.add_argument("--split", default="train")
    p.add_argument(
        "--min-answer-count",
        type=int,
        default=1,
        help="keep answers given at least this often (counting every annotator)",
    )
    p = sub.add_parser("from-tsv", help="bottom-up-attention tsv -> IMAGE_ID.npy files")
    p.add_argument("tsv")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout, force=True
    )
    if args.command == "easy-vqa":
        easy_vqa(args)
    elif args.command == "vocab":
        build_vocabularies(args.data, args.split, args.min_answer_count)
    else:
        from_tsv(args)


if __name__ == "__main__":
    main()
