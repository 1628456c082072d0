"""Download part of COCO 2017: the annotations, then only the images you ask for.

``download_coco(out_dir, "val2017", num_images=500)`` or ``categories=["cat", "dog"]`` fetches the
annotation archive once, picks images, downloads and verifies them, and writes a filtered instances
file that CocoDataset reads. Needs network access (images.cocodataset.org). Command line:
``python -m minimaskrcnn.data.download --out data/coco --split val2017 --num-images 500``.
"""
from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from minimaskrcnn.data.coco import CocoFiles, load_coco_json
from minimaskrcnn.errors import DownloadError, PathLike
from minimaskrcnn.io import atomic_write

__all__ = ["COCO_BASE_URL", "CocoFiles", "copy_sample", "download_coco", "main", "select_images"]

COCO_BASE_URL = "http://images.cocodataset.org"
_ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"  # under the base URL (about 250 MB)
_CHUNK = 1 << 20


def _download(url: str, dest: Path, timeout: float, progress: bool, what: str) -> None:
    """Stream ``url`` into ``dest`` through a temporary file (so a failed download leaves nothing)."""
    try:
        with atomic_write(dest) as f, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and f.tell() != total:
                raise DownloadError(f"{url}: got {f.tell()} of {total} bytes (connection cut?)")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        if isinstance(e, DownloadError):
            raise
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: download failed ({reason})") from None


def _image_ok(path: Path, info: dict) -> str | None:
    """None if ``path`` is a readable image of the recorded size, else what is wrong."""
    try:
        with Image.open(path) as img:
            size = img.size
            img.load()  # decodes every byte: catches truncated files
    except (OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({e})"
    if size != (info["width"], info["height"]):
        return f"image is {size[0]}x{size[1]} but its record says {info['width']}x{info['height']}"
    return None


def _read_annotations(source: Path, split: str) -> dict:
    """The instances dict of ``split`` from an annotations zip or a JSON file."""
    if zipfile.is_zipfile(source):
        member = f"annotations/instances_{split}.json"
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
            if member not in names:
                candidates = [n for n in names if n.endswith(f"instances_{split}.json")]
                if not candidates:
                    raise DownloadError(f"{source}: no instances_{split}.json in the archive")
                member = candidates[0]
            return json.loads(zf.read(member).decode("utf-8"))
    return json.loads(source.read_text(encoding="utf-8"))


def select_images(coco: dict, num_images: int | None = None, categories: Sequence[str] | None = None,
                  seed: int = 0) -> tuple[list[int], set | None]:
    """Choose image ids: those with a (non-crowd) object of ``categories`` if given, then a seeded
    random ``num_images`` of them if given.

    Returns:
        (sorted image ids, the chosen category ids or None).
    """
    category_ids = None
    candidates = sorted(img["id"] for img in coco["images"])
    if categories:
        by_name = {c["name"]: c["id"] for c in coco["categories"]}
        unknown = [name for name in categories if name not in by_name]
        if unknown:
            raise ValueError(f"unknown COCO categories {unknown}; the names are: {sorted(by_name)}")
        category_ids = {by_name[name] for name in categories}
        with_objects = {a["image_id"] for a in coco["annotations"]
                        if a["category_id"] in category_ids and not a.get("iscrowd", 0)}
        candidates = [i for i in candidates if i in with_objects]
    if num_images is not None and num_images < len(candidates):
        pick = np.random.default_rng(seed).permutation(len(candidates))[:num_images]
        candidates = sorted(candidates[i] for i in pick)
    return candidates, category_ids


def download_coco(
    out_dir: PathLike,
    split: str = "val2017",
    num_images: int | None = None,
    categories: Sequence[str] | None = None,
    *,
    base_url: str = COCO_BASE_URL,
    annotations_url: str | None = None,
    seed: int = 0,
    progress: bool = True,
    timeout: float = 60.0,
) -> CocoFiles:
    """Download COCO annotations and a chosen subset of the images of one split.

    Steps: 1. fetch the annotations (``annotations_url``, a zip like COCO's
    annotations_trainval2017.zip or a plain instances JSON; kept in ``out_dir/downloads/`` and not
    fetched again); 2. choose images (see ``select_images``: all, ``num_images`` at random with
    ``seed``, and/or those showing one of ``categories``); 3. download each missing image from
    ``{base_url}/{split}/{file_name}`` and check that it decodes to its recorded size; 4. write
    ``out_dir/annotations/instances_{split}.json`` with the chosen images, their annotations (only
    those of ``categories`` when given: other objects then count as background), every category
    (ids stay COCO's) and the licenses table.

    Args:
        out_dir: where to put ``annotations/`` and ``{split}/``.
        split: "train2017" or "val2017".
        num_images: how many images (None: all that qualify).
        categories: COCO category names, e.g. ["cat", "dog"] (None: any).
        base_url: the image server.
        annotations_url: default ``{base_url}/annotations/annotations_trainval2017.zip``.
        seed: seeds the random choice of images.
        progress: show tqdm progress bars.
        timeout: seconds to wait for the server.

    Returns:
        CocoFiles(annotation_file, image_dir).

    Raises:
        DownloadError: a download failed or an image failed verification (names the URL and image id).
        ValueError: an unknown category name.
    """
    out_dir = Path(out_dir)
    annotations_url = annotations_url or f"{base_url.rstrip('/')}/{_ANNOTATIONS_ZIP}"
    source = out_dir / "downloads" / Path(annotations_url.split("?")[0]).name
    if not source.is_file():
        _download(annotations_url, source, timeout, progress, source.name)
    try:
        coco = _read_annotations(source, split)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        source.unlink()  # a damaged download: fetch it again next time
        raise DownloadError(f"{annotations_url}: the downloaded annotations are damaged ({e}); run again") from None

    image_ids, category_ids = select_images(coco, num_images, categories, seed)
    keep = set(image_ids)
    images = [img for img in coco["images"] if img["id"] in keep]
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for info in tqdm(images, desc=f"{split} images", unit="img", disable=not progress):
        path = image_dir / info["file_name"]
        if path.is_file() and _image_ok(path, info) is None:
            continue
        url = f"{base_url.rstrip('/')}/{split}/{info['file_name']}"
        _download(url, path, timeout, progress=False, what=info["file_name"])
        problem = _image_ok(path, info)
        if problem is not None:
            path.unlink()
            raise DownloadError(f"{url}: image id {info['id']}: {problem}")

    annotations = [a for a in coco["annotations"] if a["image_id"] in keep
                   and (category_ids is None or a["category_id"] in category_ids)]
    subset = {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": coco["categories"],
    }
    annotation_file = out_dir / "annotations" / f"instances_{split}.json"
    with atomic_write(annotation_file, "w") as f:
        f.write(json.dumps(subset))
    load_coco_json(annotation_file)  # the file we hand out must pass the checks
    return CocoFiles(annotation_file, image_dir)


def copy_sample(out_dir: PathLike) -> Path:
    """Copy the COCO sample shipped with the package (annotations/, train2017/, val2017/, README.md)
    to ``out_dir``, e.g. to look at it or to add images; existing files are overwritten.

    Returns:
        out_dir.
    """
    import shutil

    from minimaskrcnn.data import SAMPLE_DIR

    out_dir = Path(out_dir)
    shutil.copytree(SAMPLE_DIR, out_dir, dirs_exist_ok=True)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m minimaskrcnn.data.download --out DIR [--split S] [--num-images N]
    [--categories cat,dog]``."""
    parser = argparse.ArgumentParser(description="Download COCO 2017 annotations and a subset of its images.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--split", default="val2017", choices=["train2017", "val2017"])
    parser.add_argument("--num-images", type=int, default=None, help="how many images (default: all)")
    parser.add_argument("--categories", default=None, help="comma-separated category names, e.g. cat,dog")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of images")
    parser.add_argument("--base-url", default=COCO_BASE_URL)
    parser.add_argument("--annotations-url", default=None)
    args = parser.parse_args(argv)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    files = download_coco(args.out, args.split, args.num_images, categories, base_url=args.base_url,
                          annotations_url=args.annotations_url, seed=args.seed)
    print(f"annotations: {files.annotation_file}\nimages:      {files.image_dir}")


if __name__ == "__main__":
    main()
