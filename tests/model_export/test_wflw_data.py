"""WFLW readers (both forms), subsets, errors, training transforms, DARK targets, Dataset."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from model_export.data.dataset import WFLWTrainDataset
from model_export.data.targets import unbiased_gaussian_targets
from model_export.data.transforms import (
    Augmentation,
    AugmentConfig,
    draw_augmentation,
    fliplr_joints,
    train_sample,
)
from model_export.data.wflw import (
    ATTRIBUTES,
    SUBSET_ORDER,
    WFLWError,
    WFLWSource,
    center_scale_from_landmarks,
    find_split,
    read_json,
    read_split,
    read_txt,
    subset,
    subsets_by_flags,
)
from service.pipeline.config import PipelineConfig
from service.pipeline.keypoints import FLIP_PAIRS
from tests.conftest import DATA
from tests.model_export.synthetic_wflw import make_synthetic_wflw

CONFIG = PipelineConfig()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_wflw(tmp_path_factory.mktemp("wflw"), num_train=6, num_test=6)


def _copy(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth.root, root)
    return root


# --------------------------------------------------------------------------- readers


def test_txt_reader_matches_generated_landmarks(synth):
    for split in ("train", "test"):
        records = read_split(synth.root, split)
        truth = synth.faces[split]
        assert len(records) == len(truth)
        for record, face in zip(records, truth):
            np.testing.assert_allclose(record.keypoints, face.keypoints, atol=1e-4)
            assert record.image_path == synth.img_dir / face.rel_path
            assert record.image_path.is_file()
            assert record.visible.tolist() == [1.0] * 98
            assert tuple(record.attributes[a] for a in ATTRIBUTES) == face.flags
            x1, y1, x2, y2 = face.rect
            np.testing.assert_allclose(record.bbox, [x1, y1, x2 - x1, y2 - y1])
    # the last test image holds two faces, listed on two lines
    test = read_split(synth.root, "test")
    assert test[-1].image_path == test[-2].image_path
    assert test[-1].source.endswith(f":{len(test)}")


def test_txt_center_scale_is_landmark_extent_midpoint_and_max_extent():
    points = np.zeros((98, 2), np.float32)
    points[:, 0] = np.linspace(100, 160, 98)  # extent 60 wide
    points[:, 1] = np.linspace(50, 130, 98)  # 80 high
    center, scale = center_scale_from_landmarks(points)
    np.testing.assert_allclose(center, [130, 90])
    assert center.dtype == np.float32
    assert scale == pytest.approx(80 / 200)


def test_json_reader_matches_txt(synth):
    txt = read_split(synth.root, "test")
    js = read_json(synth.json["test"], synth.img_dir)
    assert len(js) == len(txt)
    for a, b in zip(txt, js):
        assert a.image_path == b.image_path
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
        # JSON: centre on the half-pixel grid, scale rounded up to 0.005 (mmpose's samples)
        assert np.all(np.abs(a.center - b.center) <= 0.25 + 1e-4)
        assert a.scale <= b.scale < a.scale + 0.005 + 1e-9
        assert b.attributes is None


def test_real_mmpose_sample_json():
    records = read_json(DATA / "wflw_samples" / "test_wflw.json", DATA / "wflw_samples")
    assert len(records) == 4
    assert [r.image_path.name for r in records].count("7_Cheering_Cheering_7_16.jpg") == 3
    first = records[0]
    np.testing.assert_array_equal(first.center, np.float32([482.5, 164.5]))
    assert first.scale == 0.425
    np.testing.assert_allclose(first.keypoints[0], [440.696106, 132.732559], atol=1e-4)
    # The text-form rule is close to, not equal to, mmpose's unpublished conversion.
    for r in records:
        center, scale = center_scale_from_landmarks(r.keypoints)
        assert np.abs(center - r.center).max() <= 0.5
        assert 0 < r.scale - scale <= 0.01


def test_find_split_in_both_layouts(synth, tmp_path):
    assert find_split(synth.root, "train").form == "txt"
    root = tmp_path / "mmpose_layout"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(synth.json["train"], root / "annotations")
    shutil.copytree(synth.img_dir, root / "images")
    source = find_split(root, "train")
    assert source == WFLWSource("json", root / "annotations" / "face_landmarks_wflw_train.json",
                                root / "images")
    assert len(source.read()) == len(synth.faces["train"])


# --------------------------------------------------------------------------- subsets


def test_subsets_follow_the_flags(synth):
    records = read_split(synth.root, "test")
    faces = synth.faces["test"]
    sets = subsets_by_flags(records)
    assert list(sets) == list(SUBSET_ORDER)
    assert len(sets["test"]) == len(records)
    for j, attribute in enumerate(ATTRIBUTES):
        expected = [i for i, f in enumerate(faces) if f.flags[j] == 1]
        got = [records.index(r) for r in subset(records, attribute)]
        assert got == expected and 0 < len(got) < len(records)
        # the official list_98pt_test_<subset>.txt holds the same faces
        listed = read_txt(synth.subset_txt[attribute], synth.img_dir)
        assert [r.keypoints.tobytes() for r in listed] == \
            [records[i].keypoints.tobytes() for i in expected]


def test_json_subsets_come_from_mmpose_subset_files(synth):
    sets = WFLWSource("json", synth.json["test"], synth.img_dir).read_subsets()
    assert list(sets) == list(SUBSET_ORDER)
    txt_sets = subsets_by_flags(read_split(synth.root, "test"))
    for name in SUBSET_ORDER:
        assert len(sets[name]) == len(txt_sets[name])


def test_flag_subset_of_json_records_is_refused(synth):
    with pytest.raises(WFLWError, match="attribute flags"):
        subset(read_json(synth.json["test"], synth.img_dir), "blur")
    with pytest.raises(WFLWError, match="unknown subset"):
        subset(read_split(synth.root, "test"), "sunglasses")


# --------------------------------------------------------------------------- errors


def test_wrong_root(tmp_path):
    with pytest.raises(WFLWError, match="not a directory"):
        find_split(tmp_path / "nope", "train")
    with pytest.raises(WFLWError, match="does not look like a WFLW root") as info:
        find_split(tmp_path, "train")
    assert "list_98pt_rect_attr_train.txt" in str(info.value)
    assert "face_landmarks_wflw_train.json" in str(info.value)


def test_wrong_root_exits_2_from_the_cli(tmp_path, capsys):
    from model_export.cli import main

    assert main(["train", "--wflw-root", str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    assert "does not look like a WFLW root" in capsys.readouterr().err


def test_missing_image_names_file_and_line(synth, tmp_path):
    root = _copy(synth, tmp_path)
    face = synth.faces["train"][2]
    (root / "WFLW_images" / face.rel_path).unlink()
    with pytest.raises(WFLWError, match="1 image file") as info:
        read_split(root, "train")
    assert face.rel_path in str(info.value)
    assert "list_98pt_rect_attr_train.txt:3" in str(info.value)


def test_malformed_lines_name_file_and_line(synth, tmp_path):
    root = _copy(synth, tmp_path)
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_train.txt"
    good = ann.read_text().splitlines()

    def broken(line_no: int, line: str) -> str:
        lines = list(good)
        lines[line_no - 1] = line
        ann.write_text("\n".join(lines) + "\n")
        with pytest.raises(WFLWError) as info:
            read_txt(ann, root / "WFLW_images")
        assert f"{ann}:{line_no}:" in str(info.value)
        return str(info.value)

    fields = good[3].split()
    assert "expected 207" in broken(4, " ".join(fields[:-2]))
    assert "'abc'" in broken(2, " ".join(["abc", *fields[1:]]))
    bad_flag = list(fields)
    bad_flag[200] = "2"
    assert "must be 0 or 1" in broken(5, " ".join(bad_flag))


def test_malformed_json(synth, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(WFLWError, match="not valid JSON"):
        read_json(bad, synth.img_dir)
    doc = json.loads(synth.json["test"].read_text())
    doc["annotations"][1]["keypoints"] = doc["annotations"][1]["keypoints"][:-3]
    bad.write_text(json.dumps(doc))
    with pytest.raises(WFLWError, match=r"annotations\[1\].*294 numbers"):
        read_json(bad, synth.img_dir)
    doc = json.loads(synth.json["test"].read_text())
    doc["annotations"][0]["image_id"] = 999
    bad.write_text(json.dumps(doc))
    with pytest.raises(WFLWError, match="image_id 999 is not in 'images'"):
        read_json(bad, synth.img_dir)


# --------------------------------------------------------------------------- targets


def test_target_peak_on_grid_point_and_shapes():
    joints = np.zeros((98, 2), np.float32)
    joints[0] = (128, 128)  # heatmap (32, 32)
    joints[1] = (130, 86)  # heatmap (32.5, 21.5): off-grid
    target, weight = unbiased_gaussian_targets(joints, np.ones(98))
    assert target.shape == (98, 64, 64) and target.dtype == np.float32
    assert weight.shape == (98, 1) and weight.dtype == np.float32
    assert target[0, 32, 32] == 1.0
    assert target[0, 32, 34] == pytest.approx(np.exp(-4 / 8), rel=1e-6)
    # an off-grid centre: the Gaussian is not re-centred on a pixel, so the peak is below 1
    assert target[1].max() == pytest.approx(np.exp(-0.5 / 8), rel=1e-6)
    assert target[1, 21, 32] == target[1, 22, 33]  # symmetric about (32.5, 21.5)
    # untruncated: far from the centre the value is tiny but not clipped to zero
    assert 0 < target[0, 32, 50] < 1e-15


def test_target_weight_window_rule():
    # mu = joint / 4; zero iff mu - 6 >= 64 or mu + 7 < 0 (per axis); sigma 2
    xs = [-28.0, -28.1, 279.9, 280.0, 100.0]
    joints = np.array([[x, 100.0] for x in xs] + [[100.0, -28.1], [100.0, 280.0]], np.float32)
    target, weight = unbiased_gaussian_targets(joints, np.ones(len(joints)))
    assert weight[:, 0].tolist() == [1, 0, 1, 0, 1, 0, 0]
    assert np.all(target[[1, 3, 5, 6]] == 0)
    assert target[0].max() > 0 and target[2].max() > 0


def test_invisible_joint_has_zero_weight_and_map():
    joints = np.full((98, 2), 128, np.float32)
    visible = np.ones(98)
    visible[5] = 0
    target, weight = unbiased_gaussian_targets(joints, visible)
    assert weight[5, 0] == 0 and not target[5].any() and weight[6, 0] == 1


# --------------------------------------------------------------------------- transforms


def test_draw_order_is_flip_scale_rotation_rotprob():
    aug = AugmentConfig()
    got = draw_augmentation(np.random.default_rng(3), aug)
    rng = np.random.default_rng(3)
    flip = rng.random() <= 0.5
    s = np.clip(rng.standard_normal() * 0.25 + 1, 0.75, 1.25)
    r = np.clip(rng.standard_normal() * 30, -60, 60)
    r = r if rng.random() <= 0.6 else 0
    assert (got.flipped, got.scale_factor, got.rotation) == (flip, s, r)


def test_fliplr_joints_swaps_pairs_and_zeroes_invisible():
    joints = np.arange(196, dtype=np.float32).reshape(98, 2)
    visible = np.ones(98, np.float32)
    visible[72] = 0
    flipped, vis = fliplr_joints(joints, visible, 200, FLIP_PAIRS)
    assert flipped[72].tolist() == [199 - joints[60, 0], joints[60, 1]]
    assert vis[60] == 0 and flipped[60].tolist() == [0, 0]  # 72 was invisible
    assert flipped[16].tolist() == [199 - joints[16, 0], joints[16, 1]]  # self-paired


def _sample(synth, index: int, augmentation: Augmentation):
    record = read_split(synth.root, "train")[index]
    rgb = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
    return record, rgb, train_sample(rgb, record.keypoints, record.visible, record.center,
                                     record.scale, None, CONFIG, augmentation=augmentation)


def test_flip_mirrors_the_crop_about_its_centre(synth):
    _, _, plain = _sample(synth, 1, Augmentation(False, 1.0, 0.0))
    _, _, flipped = _sample(synth, 1, Augmentation(True, 1.0, 0.0))
    # x' -> 256 - x' with the pairs swapped (mmpose's flip maps x to width - 1 - x)
    swap = np.arange(98)
    for a, b in FLIP_PAIRS:
        swap[a], swap[b] = b, a
    expected = plain["joints"][swap]
    expected[:, 0] = 256 - expected[:, 0]
    np.testing.assert_allclose(flipped["joints"], expected, atol=1e-2)
    assert flipped["joints"][60, 0] < flipped["joints"][72, 0]  # still left of 72 in the crop
    np.testing.assert_allclose(flipped["img"][:, :, 1:], plain["img"][:, :, :0:-1], atol=0.1)


def test_crop_pixels_and_joints_stay_aligned_under_augmentation(synth):
    record = read_split(synth.root, "train")[0]
    rgb = np.zeros((160, 160, 3), np.uint8)
    # pure colours, the same on both members of a flip pair (a flip moves k onto its partner)
    colours = {0: (255, 0, 0), 32: (255, 0, 0), 16: (0, 255, 0), 60: (0, 0, 255), 72: (0, 0, 255)}
    for k, colour in colours.items():
        x, y = np.round(record.keypoints[k]).astype(int)
        rgb[y - 1:y + 2, x - 1:x + 2] = colour
    keypoints = record.keypoints.copy()
    for k in colours:
        keypoints[k] = np.round(keypoints[k])
    rng = np.random.default_rng(0)
    mean = np.float32(CONFIG.mean)[:, None, None]
    std = np.float32(CONFIG.std)[:, None, None]
    checked = 0
    for _ in range(8):
        sample = train_sample(rgb, keypoints, record.visible, record.center, record.scale, rng,
                              CONFIG, AugmentConfig(flip_prob=0.5, rot_prob=1.0))
        pixels = (sample["img"] * std + mean) * 255
        for k, colour in colours.items():
            x, y = np.round(sample["joints"][k]).astype(int)
            if not (2 <= x < 254 and 2 <= y < 254):
                continue  # rotated / scaled out of the crop
            checked += 1
            got = pixels[:, y, x]
            assert np.argmax(got) == int(np.argmax(colour)) and got.max() > 120, (k, got)
        peak = np.unravel_index(sample["target"][60].argmax(), (64, 64))
        assert np.abs(np.array(peak[::-1]) - sample["joints"][60] / 4).max() <= 0.5
    assert checked >= 30


def test_dataset_is_deterministic_per_seed_and_epoch(synth):
    records = read_split(synth.root, "train")
    a = WFLWTrainDataset(records, CONFIG, seed=1)
    b = WFLWTrainDataset(records, CONFIG, seed=1)
    first = a[2]
    assert first["img"].shape == (3, 256, 256) and first["target"].shape == (98, 64, 64)
    assert first["target_weight"].shape == (98, 1)
    assert np.array_equal(first["img"], b[2]["img"])
    a.set_epoch(1)
    assert not np.array_equal(a[2]["img"], first["img"])
    c = WFLWTrainDataset(records, CONFIG, seed=1, rank=1)
    assert not np.array_equal(c[2]["img"], first["img"])
