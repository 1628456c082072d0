"""download_coco against a fake COCO server on 127.0.0.1 (no network needed)."""
import functools
import http.server
import json
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.data import CocoDataset
from minimaskrcnn.data.download import copy_sample, download_coco, main, select_images
from minimaskrcnn.errors import DownloadError

# 6 images; categories person=1, cat=17, dog=18; image 6 shows only a crowd of people
_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
_OBJECTS = {1: [17], 2: [18, 1], 3: [1], 4: [17, 18], 5: [], 6: []}


def _fake_coco():
    images, annotations = [], []
    for image_id, categories in _OBJECTS.items():
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 32 + image_id, "height": 24,
                       "license": 1, "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg"})
        for k, cat in enumerate(categories):
            x = 2 + 10 * k
            annotations.append({"id": 100 * image_id + k, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                                "bbox": [x, 2, 8, 8], "area": 64.0,
                                "segmentation": [[x, 2, x + 8, 2, x + 8, 10, x, 10]]})
    annotations.append({"id": 600, "image_id": 6, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 5, 5], "area": 25.0,
                        "segmentation": {"size": [24, 38], "counts": [0, 5, 19, 5, 19, 5, 19, 5, 19, 5, 811]}})
    return {"info": {"description": "fake"}, "licenses": [{"id": 1, "name": "test", "url": ""}],
            "images": images, "annotations": annotations, "categories": _CATEGORIES}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requested.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serve a fake COCO tree: annotations/annotations_trainval2017.zip and val2017/*.jpg."""
    root = tmp_path / "server"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    coco = _fake_coco()
    with zipfile.ZipFile(root / "annotations" / "annotations_trainval2017.zip", "w") as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(coco))
        zf.writestr("annotations/instances_train2017.json", json.dumps(dict(coco, images=[], annotations=[])))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    rng = np.random.default_rng(0)
    for img in coco["images"]:
        pixels = rng.integers(0, 256, size=(img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2017" / img["file_name"], quality=90)
    handler = type("Handler", (_QuietHandler,), {"requested": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "root": root, "requests": handler.requested}
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_a_number_of_images(server, tmp_path):
    out = tmp_path / "coco"
    files = download_coco(out, "val2017", num_images=3, base_url=server["url"], progress=False)
    data = json.loads(files.annotation_file.read_text())
    ids = [img["id"] for img in data["images"]]
    assert len(ids) == 3 and ids == sorted(ids)
    assert sorted(p.name for p in files.image_dir.iterdir()) == sorted(img["file_name"] for img in data["images"])
    assert {a["image_id"] for a in data["annotations"]} <= set(ids)
    assert sum(len(_OBJECTS[i]) for i in ids) + (6 in ids) == len(data["annotations"])
    assert data["categories"] == _CATEGORIES and data["licenses"]
    for name in files.image_dir.iterdir():  # byte-identical to the server's
        assert name.read_bytes() == (server["root"] / "val2017" / name.name).read_bytes()
    ds = CocoDataset(*files)
    assert len(ds) == 3 and ds[0][0].shape[0] == 3

    # a second run finds everything in place and downloads nothing
    before = len(server["requests"])
    assert download_coco(out, "val2017", num_images=3, base_url=server["url"], progress=False) == files
    assert len(server["requests"]) == before
    # the same seed picks the same images; all images when num_images is None
    assert select_images(data | {"images": _fake_coco()["images"]}, 3, seed=0)[0] == ids
    everything = download_coco(tmp_path / "all", "val2017", base_url=server["url"], progress=False)
    assert len(json.loads(everything.annotation_file.read_text())["images"]) == 6


def test_download_by_category(server, tmp_path):
    files = download_coco(tmp_path / "cats", "val2017", categories=["cat"], base_url=server["url"], progress=False)
    data = json.loads(files.annotation_file.read_text())
    assert [img["id"] for img in data["images"]] == [1, 4]
    assert {a["category_id"] for a in data["annotations"]} == {17}  # other objects are dropped
    # a crowd alone does not qualify an image
    files = download_coco(tmp_path / "people", "val2017", categories=["person"], base_url=server["url"],
                          progress=False)
    assert [img["id"] for img in json.loads(files.annotation_file.read_text())["images"]] == [2, 3]
    with pytest.raises(ValueError, match="unknown COCO categories"):
        download_coco(tmp_path / "x", "val2017", categories=["unicorn"], base_url=server["url"], progress=False)


def test_annotations_from_a_json_url(server, tmp_path):
    files = download_coco(tmp_path / "j", "val2017", num_images=1, base_url=server["url"], progress=False,
                          annotations_url=server["url"] + "/annotations/instances_val2017.json")
    assert len(json.loads(files.annotation_file.read_text())["images"]) == 1


def test_missing_image_on_the_server(server, tmp_path):
    (server["root"] / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(DownloadError) as err:
        download_coco(tmp_path / "c", "val2017", base_url=server["url"], progress=False)
    assert "404" in str(err.value) and "000000000002.jpg" in str(err.value)
    assert not list((tmp_path / "c" / "val2017").glob("*.part"))  # no half-written file


def test_image_failing_verification(server, tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(server["root"] / "val2017" / "000000000003.jpg")
    with pytest.raises(DownloadError) as err:
        download_coco(tmp_path / "c", "val2017", base_url=server["url"], progress=False)
    assert "image id 3" in str(err.value) and "000000000003.jpg" in str(err.value) and "10x10" in str(err.value)
    assert not (tmp_path / "c" / "val2017" / "000000000003.jpg").exists()


def test_damaged_local_image_is_fetched_again(server, tmp_path):
    out = tmp_path / "c"
    files = download_coco(out, "val2017", num_images=2, base_url=server["url"], progress=False)
    victim = next(files.image_dir.iterdir())
    victim.write_bytes(b"garbage")
    download_coco(out, "val2017", num_images=2, base_url=server["url"], progress=False)
    assert victim.read_bytes() == (server["root"] / "val2017" / victim.name).read_bytes()


def test_unreachable_server(tmp_path):
    with pytest.raises(DownloadError) as err:
        download_coco(tmp_path, "val2017", base_url="http://127.0.0.1:9", progress=False, timeout=5)
    assert "127.0.0.1:9" in str(err.value)


def test_command_line(server, tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-images", "2", "--categories", "cat,dog", "--base-url", server["url"]])
    assert "instances_val2017.json" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "val2017").iterdir())) == 2


def test_copy_sample(tmp_path):
    out = copy_sample(tmp_path / "sample")
    ds = CocoDataset(out / "annotations" / "instances_val2017.json", out / "val2017")
    assert len(ds) == 32 and (out / "README.md").is_file()
