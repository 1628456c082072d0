"""Regenerate minimaskrcnn/data/sample/ (the small COCO 2017 sample shipped with the package).

Usage (a developer tool, run by hand; the library and the tests never run it):

    python tools/make_coco_sample.py /path/to/coco [--out minimaskrcnn/data/sample] [--train 32] [--val 32]

The COCO folder must hold annotations/instances_{train,val}2017.json and the images in
train2017/ and val2017/ (the full data set or any subset of it). The choice is deterministic:
1. 8 "overfit" train images: no crowd region, 2-8 objects each of area >= 2000 px, picked greedily for
   the most categories not yet covered (ties: more objects, then the smaller file);
2. the rest of train and all of val: greedily the image adding the most uncovered categories (ties:
   the smaller file), among files under --max-file-kb.
It writes annotations/instances_{train2017,val2017,overfit}.json (only the chosen images and their
annotations; all categories, the licenses table and info kept), copies the images and writes README.md.
Where the COCO folder also holds annotations/person_keypoints_{train,val}2017.json, it writes
annotations/person_keypoints_{train2017,val2017}.json: the chosen images that file lists, with their
person keypoint annotations.
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

NUM_OVERFIT = 8


def _stats(coco: dict, image_dir: Path) -> dict[int, dict]:
    """Per image id: file size, categories, number of objects, smallest object area, crowd or not."""
    anns = defaultdict(list)
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    stats = {}
    for img in coco["images"]:
        path = image_dir / img["file_name"]
        if not path.is_file():
            continue
        objs = [a for a in anns[img["id"]] if not a.get("iscrowd", 0)]
        stats[img["id"]] = {
            "size": path.stat().st_size,
            "cats": {a["category_id"] for a in objs},
            "num": len(objs),
            "min_area": min((a["area"] for a in objs), default=0.0),
            "crowd": any(a.get("iscrowd", 0) for a in anns[img["id"]]),
        }
    return stats


def _greedy(stats: dict, candidates: list[int], count: int, covered: set, prefer_many: bool = False) -> list[int]:
    """Pick ``count`` ids from candidates, each time the one adding the most uncovered categories."""
    chosen, pool = [], list(candidates)
    while pool and len(chosen) < count:
        def score(i, covered=covered):
            s = stats[i]
            return (-len(s["cats"] - covered), -s["num"] if prefer_many else 0, s["size"], i)

        best = min(pool, key=score)
        pool.remove(best)
        chosen.append(best)
        covered |= stats[best]["cats"]
    return chosen


def _subset(coco: dict, ids: list[int]) -> dict:
    keep = set(ids)
    return {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": sorted((i for i in coco["images"] if i["id"] in keep), key=lambda i: i["id"]),
        "annotations": sorted((a for a in coco["annotations"] if a["image_id"] in keep), key=lambda a: a["id"]),
        "categories": coco["categories"],
    }


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


README = """# A small sample of COCO 2017

{num_train} train and {num_val} val images of COCO 2017 (cocodataset.org) with their original instance
annotations, so that the lessons and tests run without network access:

| file | images | objects (crowd) | categories |
|---|---|---|---|
| annotations/instances_train2017.json (images in train2017/) | {num_train} | {train_objs} ({train_crowd}) | {train_cats} of 80 |
| annotations/instances_val2017.json (images in val2017/) | {num_val} | {val_objs} ({val_crowd}) | {val_cats} of 80 |
| annotations/instances_overfit.json (images in train2017/) | {num_overfit} | {overfit_objs} (0) | {overfit_cats} of 80 |
{keypoint_rows}
`instances_overfit.json` lists {num_overfit} of the train images (no crowd regions, 2-8 objects each,
every object at least 2000 pixels in area) for the overfitting test and lesson.

```python
from minimaskrcnn.data import sample_dataset
ds = sample_dataset("val")   # "train", "val" or "overfit": a CocoDataset
```
{keypoint_text}
## Attribution and licenses

- Images and annotations: COCO 2017 (cocodataset.org), Lin et al., "Microsoft COCO: Common Objects in
  Context", ECCV 2014. Taken from a subset of COCO 2017 kept for this project; image ids, file names
  and annotations are unchanged, so `COCOeval` works as usual.
- The annotations are licensed under Creative Commons Attribution 4.0 (CC BY 4.0).
- Each image keeps the license of its Flickr owner: the `license` field of its entry in the JSON
  files refers to the `licenses` table (kept in full), and `flickr_url` / `coco_url` give its source.
  The images of this sample use these licenses:

{license_lines}

## More data

`minimaskrcnn.data.download_coco` (or `python -m minimaskrcnn.data.download --out data/coco --split
val2017 --num-images 500`) downloads COCO annotations and any number of images, or only the images of
chosen categories, from images.cocodataset.org on a machine with network access.

Regenerate this folder with `python tools/make_coco_sample.py /path/to/coco`.
"""

KEYPOINT_TEXT = """
`person_keypoints_*.json` are COCO's person keypoint annotations (17 keypoints, x y visibility) of
the sample images that the source's keypoint files list, for Keypoint R-CNN's tests and lesson:
`sample_dataset("val", keypoints=True)`.
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("coco_dir", type=Path, help="folder with annotations/, train2017/, val2017/")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "minimaskrcnn/data/sample")
    parser.add_argument("--train", type=int, default=32, help="number of train images (overfit ones included)")
    parser.add_argument("--val", type=int, default=32, help="number of val images")
    parser.add_argument("--max-file-kb", type=int, default=200, help="skip image files larger than this")
    args = parser.parse_args(argv)

    out: Path = args.out
    summary = {}
    license_ids: dict[int, int] = defaultdict(int)
    for split, count in (("train2017", args.train), ("val2017", args.val)):
        coco = json.loads((args.coco_dir / "annotations" / f"instances_{split}.json").read_text(encoding="utf-8"))
        stats = _stats(coco, args.coco_dir / split)
        small = sorted(i for i, s in stats.items() if s["size"] <= args.max_file_kb * 1024)
        covered: set = set()
        overfit = []
        if split == "train2017":
            easy = [i for i in small
                    if not stats[i]["crowd"] and 2 <= stats[i]["num"] <= 8 and stats[i]["min_area"] >= 2000]
            overfit = _greedy(stats, easy, NUM_OVERFIT, covered, prefer_many=True)
            if len(overfit) < NUM_OVERFIT:
                raise SystemExit(f"only {len(overfit)} images qualify for the overfit set")
        rest = _greedy(stats, [i for i in small if i not in overfit], count - len(overfit), covered)
        ids = overfit + rest

        if (out / split).exists():
            shutil.rmtree(out / split)
        (out / split).mkdir(parents=True)
        subset = _subset(coco, ids)
        for img in subset["images"]:
            shutil.copy2(args.coco_dir / split / img["file_name"], out / split / img["file_name"])
            license_ids[img.get("license")] += 1
        _write_json(subset, out / "annotations" / f"instances_{split}.json")
        summary[split] = subset
        if overfit:
            summary["overfit"] = _subset(coco, overfit)
            _write_json(summary["overfit"], out / "annotations" / "instances_overfit.json")
        keypoint_file = args.coco_dir / "annotations" / f"person_keypoints_{split}.json"
        if keypoint_file.is_file():
            keypoints = json.loads(keypoint_file.read_text(encoding="utf-8"))
            listed = {img["id"] for img in keypoints["images"]}
            summary[f"keypoints_{split}"] = _subset(keypoints, [i for i in ids if i in listed])
            _write_json(summary[f"keypoints_{split}"], out / "annotations" / f"person_keypoints_{split}.json")
        print(f"{split}: {len(ids)} images, {len(covered)} categories, "
              f"{sum(stats[i]['size'] for i in ids) / 1e6:.1f} MB; overfit ids {sorted(overfit)}")

    licenses = {lic["id"]: lic for lic in summary["train2017"]["licenses"]}
    lines = [f"  - license {lid}: {licenses[lid]['name']} ({licenses[lid]['url']}): {n} image(s)"
             for lid, n in sorted(license_ids.items()) if lid in licenses]

    def counts(subset):
        anns = subset["annotations"]
        crowd = sum(a.get("iscrowd", 0) for a in anns)
        cats = len({a["category_id"] for a in anns if not a.get("iscrowd", 0)})
        return len(subset["images"]), len(anns) - crowd, crowd, cats

    (n_t, o_t, c_t, k_t), (n_v, o_v, c_v, k_v), (n_o, o_o, _, k_o) = (
        counts(summary["train2017"]), counts(summary["val2017"]), counts(summary["overfit"]))
    keypoint_rows, keypoint_text = "", ""
    for split in ("train2017", "val2017"):
        if f"keypoints_{split}" in summary:
            subset = summary[f"keypoints_{split}"]
            labelled = [a for a in subset["annotations"] if a.get("num_keypoints", 0) > 0]
            keypoint_rows += (f"| annotations/person_keypoints_{split}.json (images in {split}/) | "
                              f"{len(subset['images'])} | {len(subset['annotations'])} persons, "
                              f"{len(labelled)} with keypoints | person |\n")
    if keypoint_rows:
        keypoint_text = KEYPOINT_TEXT
    (out / "README.md").write_text(README.format(
        num_train=n_t, train_objs=o_t, train_crowd=c_t, train_cats=k_t,
        num_val=n_v, val_objs=o_v, val_crowd=c_v, val_cats=k_v,
        num_overfit=n_o, overfit_objs=o_o, overfit_cats=k_o,
        keypoint_rows=keypoint_rows, keypoint_text=keypoint_text,
        license_lines="\n".join(lines)), encoding="utf-8")


if __name__ == "__main__":
    main()
