"""pydetops.data: the synthetic generator, the COCO and VOC readers, transforms, batching,
and the messages for bad data."""
import copy
import hashlib
import json
import os
import warnings

import numpy as np
import pytest
import torch

from pydetops.data import (CocoDetection, DatasetError, EpochSampler, Resize, ToTensor, batch_images,
                           collate_fn, hflip, keypoint_flip_indices, make_loader, read_voc_xml, voc_to_coco)
from pydetops.data import synthetic, voc
from pydetops.data.coco import decode_segmentation


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    synthetic.generate(str(out), images=6, seed=3, size=(96, 112))
    return out


def _ds(root, **kw):
    return CocoDetection(str(root / "images"), str(root / "annotations.json"), **kw)


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def _plain_rle_counts(mask):
    """Uncompressed COCO RLE written plainly: run lengths over the column-major order,
    starting with a run of zeros."""
    flat = mask.T.reshape(-1).tolist()
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


# ---------------------------------------------------------------- generator

def test_generator_is_deterministic_and_seed_dependent(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert synthetic.main([str(tmp_path / name), "--images", "3", "--seed", str(seed), "--size", "48", "64"]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    single = tmp_path / "s"
    synthetic.generate(str(single), images=4, seed=1, size=(64, 64), single_object=True)
    data = json.loads((single / "annotations.json").read_text())
    assert [sum(a["image_id"] == im["id"] for a in data["annotations"]) for im in data["images"]] == [1] * 4


def test_generator_output_is_consistent(syn):
    data = json.loads((syn / "annotations.json").read_text())
    assert sorted(c["id"] for c in data["categories"]) == [1, 3, 7]
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"} or len(data["annotations"]) < 4  # polygons and RLE
    ds = _ds(syn, masks=True, keypoints=True)
    colour_channel = {1: 0, 3: 1, 7: 2}
    for i in range(len(ds)):
        img, t = ds[i]
        arr = np.asarray(img)
        for j in range(len(t["labels"])):
            m = t["masks"][j].numpy().astype(bool)
            assert m.sum() == int(t["area"][j])
            ys, xs = np.nonzero(m)
            assert t["boxes"][j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            cid = ds.label_to_category_id[int(t["labels"][j])]
            assert int(np.argmax(arr[m].mean(0))) == colour_channel[cid]  # drawn in its colour
            kp = t["keypoints"][j]
            b = t["boxes"][j]
            assert (kp[:, 2] == 2).all()
            assert (kp[:, 0] >= b[0] - 1).all() and (kp[:, 0] <= b[2] + 1).all()
            assert float(kp[0, 0]) <= float(kp[4, 0]) <= float(kp[1, 0])  # left <= centre <= right


# ---------------------------------------------------------------- COCO reader

def test_noncontiguous_ids_map_to_contiguous_labels(syn):
    ds = _ds(syn)
    assert ds.num_classes == 4
    assert ds.label_to_category_id == [None, 1, 3, 7]
    assert ds.category_id_to_label == {1: 1, 3: 2, 7: 3}
    data = json.loads((syn / "annotations.json").read_text())
    for i in range(len(ds)):
        _, t = ds[i]
        iid = int(t["image_id"])
        want = [a for a in data["annotations"] if a["image_id"] == iid]
        assert [ds.label_to_category_id[int(l)] for l in t["labels"]] == [a["category_id"] for a in want]
        ref = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                            for a in want], dtype=torch.float32)
        torch.testing.assert_close(t["boxes"], ref.reshape(-1, 4))


def test_masks_from_polygon_and_both_rle_kinds(tmp_path):
    from PIL import Image
    H, W = 12, 10
    (tmp_path / "im").mkdir()
    Image.new("RGB", (W, H)).save(tmp_path / "im" / "a.png")
    rng = np.random.default_rng(0)
    blob = (rng.random((H, W)) > 0.6).astype(np.uint8)
    from pycocotools import mask as mask_utils
    comp = mask_utils.encode(np.asfortranarray(blob))
    data = {"images": [{"id": 4, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 11, "name": "x"}, {"id": 2, "name": "y"}],
            "annotations": [
                {"id": 1, "image_id": 4, "category_id": 11, "bbox": [2, 3, 5, 4], "iscrowd": 0,
                 "segmentation": [[2, 3, 7, 3, 7, 7, 2, 7]]},
                {"id": 2, "image_id": 4, "category_id": 2, "bbox": [0, 0, W, H], "iscrowd": 1,
                 "segmentation": {"size": [H, W], "counts": _plain_rle_counts(blob)}},
                {"id": 3, "image_id": 4, "category_id": 2, "bbox": [0, 0, W, H], "iscrowd": 0,
                 "segmentation": {"size": [H, W], "counts": comp["counts"].decode("ascii")}}]}
    ds = CocoDetection(str(tmp_path / "im"), _write(tmp_path, data), masks=True)
    _, t = ds[0]
    rect = np.zeros((H, W), np.uint8)
    rect[3:7, 2:7] = 1
    np.testing.assert_array_equal(t["masks"][0].numpy(), rect)
    np.testing.assert_array_equal(t["masks"][1].numpy(), blob)
    np.testing.assert_array_equal(t["masks"][2].numpy(), blob)
    assert t["iscrowd"].tolist() == [0, 1, 0]
    assert t["labels"].tolist() == [2, 1, 1]  # ids 2 -> 1, 11 -> 2
    no_crowd = CocoDetection(str(tmp_path / "im"), _write(tmp_path, data), masks=True, skip_crowd=True)
    _, t2 = no_crowd[0]
    assert no_crowd.num_crowd_skipped == 1 and t2["iscrowd"].tolist() == [0, 0]
    torch.testing.assert_close(t2["masks"], t["masks"][[0, 2]])
    with pytest.raises(ValueError, match="RLE size"):
        decode_segmentation({"size": [H + 1, W], "counts": [H * W]}, H, W)
    with pytest.raises(ValueError, match="polygon"):
        decode_segmentation([[1, 2, 3]], H, W)


def test_keypoint_flip_map_and_hflip(syn):
    assert keypoint_flip_indices(["left", "right", "top", "bottom", "center"]) == [1, 0, 2, 3, 4]
    assert keypoint_flip_indices(["nose", "left_eye", "right_eye", "left_ear"]) == [0, 2, 1, 3]
    ds = _ds(syn, masks=True, keypoints=True, transforms=ToTensor())
    img, t = ds[1]
    W = img.shape[-1]
    f_img, f = hflip(img, t, ds.flip_indices)
    torch.testing.assert_close(f_img, img.flip(-1))
    torch.testing.assert_close(f["boxes"][:, 0], W - t["boxes"][:, 2])
    torch.testing.assert_close(f["boxes"][:, 2], W - t["boxes"][:, 0])
    # The flipped "left" keypoint is the mirror of the original "right" one, and vice versa.
    torch.testing.assert_close(f["keypoints"][:, 0, 0], W - t["keypoints"][:, 1, 0])
    torch.testing.assert_close(f["keypoints"][:, 1, 0], W - t["keypoints"][:, 0, 0])
    torch.testing.assert_close(f["keypoints"][:, 4, 1], t["keypoints"][:, 4, 1])
    for j in range(len(f["labels"])):  # the flipped mask's tight box is the flipped box
        ys, xs = np.nonzero(f["masks"][j].numpy())
        assert f["boxes"][j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    b_img, b = hflip(f_img, f, ds.flip_indices)
    torch.testing.assert_close(b_img, img)
    for k in ("boxes", "masks", "keypoints"):
        torch.testing.assert_close(b[k], t[k])
    unlabelled = {"keypoints": torch.tensor([[[3.0, 4.0, 0.0], [5.0, 6.0, 2.0]]])}
    assert hflip(torch.zeros(3, 4, 10), unlabelled)[1]["keypoints"].tolist() == [[[3.0, 4.0, 0.0], [5.0, 6.0, 2.0]]]


def test_resize_by_min_max_size(syn):
    ds = _ds(syn, masks=True, keypoints=True, transforms=ToTensor())
    img, t = ds[0]  # 96 x 112
    r_img, r = Resize(48, 1000)(img, t)
    assert tuple(r_img.shape) == (3, 48, 56)
    torch.testing.assert_close(r["boxes"], t["boxes"] * 0.5)
    torch.testing.assert_close(r["keypoints"][..., :2], t["keypoints"][..., :2] * 0.5)
    assert tuple(r["masks"].shape[1:]) == (48, 56) and r["masks"].dtype == torch.uint8
    r_img, r = Resize(200, 140)(img, t)  # the long side caps: 112 -> 140
    assert tuple(r_img.shape) == (3, 120, 140)
    with pytest.raises(ValueError, match="min_size"):
        Resize(0, 10)


def test_batching_sampler_and_workers(syn):
    imgs = [torch.rand(3, 50, 70), torch.rand(3, 65, 33)]
    batch, sizes = batch_images(imgs, 32)
    assert tuple(batch.shape) == (2, 3, 96, 96) and sizes == [(50, 70), (65, 33)]
    torch.testing.assert_close(batch[1, :, :65, :33], imgs[1])
    assert float(batch[1, :, 65:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="images\\[1\\]"):
        batch_images([torch.rand(3, 4, 4), torch.rand(1, 4, 4)])
    # N ranks with batch B see the global batches of one process with batch N * B.
    one = list(EpochSampler(10, seed=4))
    for world in (2, 3):
        parts = [list(EpochSampler(10, seed=4, rank=r, world_size=world)) for r in range(world)]
        assert sorted(sum(parts, [])) == sorted(one + one[: len(sum(parts, [])) - 10])
        assert [parts[r][0] for r in range(world)] == one[:world]
    s = EpochSampler(10, seed=4)
    s.set_epoch(1)
    assert list(s) != one and sorted(s) == list(range(10))
    ds = _ds(syn, masks=True, transforms=ToTensor())
    seq = [(i, t) for i, t in make_loader(ds, 2, workers=0)]
    par = [(i, t) for i, t in make_loader(ds, 2, workers=2)]
    assert len(seq) == len(par) == 3
    for (ia, ta), (ib, tb) in zip(seq, par):
        assert isinstance(ia, list) and isinstance(ta, list) and len(ia) == 2
        for x, y in zip(ia, ib):
            torch.testing.assert_close(x, y)
        for x, y in zip(ta, tb):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert collate_fn([(1, {"a": 1}), (2, {"a": 2})]) == ([1, 2], [{"a": 1}, {"a": 2}])


# ---------------------------------------------------------------- bad data

def test_bad_data_messages(syn, tmp_path):
    ann = str(syn / "annotations.json")
    good = json.loads((syn / "annotations.json").read_text())
    imgs = str(syn / "images")

    bad = tmp_path / "malformed.json"
    bad.write_text('{"images": [1, 2,, 3]}')
    with pytest.raises(DatasetError, match=r"malformed\.json: malformed JSON at line 1 column"):
        CocoDetection(imgs, str(bad))
    with pytest.raises(DatasetError, match="nothere.json: annotation file not found"):
        CocoDetection(imgs, str(tmp_path / "nothere.json"))

    d = copy.deepcopy(good)
    d["images"][2]["file_name"] = "missing.png"
    with pytest.raises(DatasetError, match=r"missing\.png: image file not found \(image id 3 in .*bad1\.json\)"):
        CocoDetection(imgs, _write(tmp_path, d, "bad1.json"))

    d = copy.deepcopy(good)
    d["annotations"][1]["category_id"] = 99
    aid, iid = d["annotations"][1]["id"], d["annotations"][1]["image_id"]
    with pytest.raises(DatasetError, match=rf"bad2\.json: annotation id {aid} \(image id {iid}\) has unknown category_id 99"):
        CocoDetection(imgs, _write(tmp_path, d, "bad2.json"))

    for box in ([1, 2, 3], [0, 0, float("nan"), 4], "abc"):
        d = copy.deepcopy(good)
        d["annotations"][0]["bbox"] = box
        with pytest.raises(DatasetError, match=r"annotation id 1 \(image id 1\) has a malformed bbox"):
            CocoDetection(imgs, _write(tmp_path, d, "bad3.json"))

    d = copy.deepcopy(good)
    d["annotations"][0]["image_id"] = 1234
    with pytest.raises(DatasetError, match="annotation id 1 refers to unknown image id 1234"):
        CocoDetection(imgs, _write(tmp_path, d, "bad4.json"))

    d = copy.deepcopy(good)
    d["images"].append(dict(d["images"][0]))
    with pytest.raises(DatasetError, match="image id 1 appears twice"):
        CocoDetection(imgs, _write(tmp_path, d, "bad5.json"))

    d = copy.deepcopy(good)
    d["annotations"][0]["keypoints"] = [1, 2, 2]
    with pytest.raises(DatasetError, match=r"annotation id 1 \(image id 1\) has 3 keypoint values, expected 15"):
        CocoDetection(imgs, _write(tmp_path, d, "bad6.json"))

    d = copy.deepcopy(good)
    d["annotations"][0]["segmentation"] = {"counts": 7}
    ds = CocoDetection(imgs, _write(tmp_path, d, "bad7.json"), masks=True)
    with pytest.raises(DatasetError, match=r"annotation id 1 \(image id 1\) has a malformed segmentation"):
        ds[0]

    # Degenerate boxes: skipped, one warning that counts them.
    d = copy.deepcopy(good)
    d["annotations"][0]["bbox"][2] = 0.0
    d["annotations"][2]["bbox"][3] = -3.0
    with pytest.warns(UserWarning, match=r"skipped 2 annotation\(s\) with a degenerate box .* first: annotation id 1"):
        ds = CocoDetection(imgs, _write(tmp_path, d, "degenerate.json"))
    assert ds.num_degenerate == 2
    n_objects = sum(len(ds[i][1]["labels"]) for i in range(len(ds)))
    assert n_objects == len(good["annotations"]) - 2


def test_unreadable_or_mismatched_image(syn, tmp_path):
    import shutil
    from PIL import Image
    imgs = tmp_path / "images"
    shutil.copytree(syn / "images", imgs)
    (imgs / "000002.png").write_bytes(b"not a png at all")
    ds = CocoDetection(str(imgs), str(syn / "annotations.json"))
    with pytest.raises(DatasetError, match=r"000002\.png: unreadable image \(image id 2 in .*annotations\.json\)"):
        ds[1]
    Image.new("RGB", (5, 7)).save(imgs / "000003.png")
    with pytest.raises(DatasetError, match=r"000003\.png: image is 5x7 but .* says 112x96 \(image id 3\)"):
        ds[2]
    (imgs / "000004.png").unlink()  # removed after the dataset was built
    with pytest.raises(DatasetError, match=r"000004\.png: image file not found \(image id 4"):
        ds[3]


# ---------------------------------------------------------------- VOC

_VOC_XML = """<annotation><filename>{fn}</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>
</annotation>"""


def test_voc_reader_and_converter(tmp_path):
    from PIL import Image
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for vid in ("a1", "b2"):
        (root / "Annotations" / f"{vid}.xml").write_text(_VOC_XML.format(fn=f"{vid}.jpg"))
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{vid}.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a1\nb2\n")
    r = read_voc_xml(str(root / "Annotations" / "a1.xml"))
    assert r["width"] == 40 and r["height"] == 30
    assert r["objects"][0]["bbox"] == [0.0, 1.0, 10.0, 11.0]  # 1-based inclusive -> 0-based x, y, w, h
    assert [o["difficult"] for o in r["objects"]] == [0, 1]
    out = tmp_path / "voc.json"
    assert voc.main([str(root), str(out), "--split", "train"]) == 0
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]][:3] == ["aeroplane", "bicycle", "bird"]  # VOC's 20
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1, 0, 1]
    ds = CocoDetection(str(root / "JPEGImages"), str(out), masks=True)
    _, t = ds[0]
    assert [ds.categories[int(l) - 1]["name"] for l in t["labels"]] == ["dog", "cat"]
    assert t["boxes"][0].tolist() == [0.0, 1.0, 10.0, 12.0]
    custom = voc_to_coco(str(root), "train", classes=["cat", "dog"])
    assert [c["id"] for c in custom["categories"]] == [1, 2]
    with pytest.raises(DatasetError, match=r"a1\.xml: unknown class 'dog'"):
        voc_to_coco(str(root), "train", classes=["cat"])
    (root / "Annotations" / "b2.xml").write_text("<annotation><filename>")
    with pytest.raises(DatasetError, match=r"b2\.xml: malformed XML"):
        voc_to_coco(str(root), "train")
    with pytest.raises(DatasetError, match=r"val\.txt: split list not found"):
        voc_to_coco(str(root), "val")
