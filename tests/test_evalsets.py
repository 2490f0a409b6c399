"""Validation-set layouts and label files (mvit_cli/evaluation/sets.py): detection, search, mapping, errors, --limit.

Image contents do not matter here (nothing is decoded), so the "images" are empty files with image names.
The class facts below are the test's own ground truth, from the ImageNet devkit's map_clsloc.txt (ILSVRC2012_ID)
and the sorted-wnid class order the model uses: the two orders differ, so a wrong mapping cannot pass.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mvit_cli.errors import DatasetError, NoImagesError, UsageError
from mvit_cli.evaluation.sets import EvalItem, balanced_subset, load_eval_set

# (wnid, index in the model's output = position in sorted-wnid order, devkit ILSVRC2012_ID)
KIT_FOX = ("n02119789", 278, 1)
ENGLISH_SETTER = ("n02100735", 212, 2)
SIBERIAN_HUSKY = ("n02110185", 250, 3)
EGYPTIAN_CAT = ("n02124075", 285, 8)
TENCH = ("n01440764", 0, 449)
CLASSES = (KIT_FOX, ENGLISH_SETTER, SIBERIAN_HUSKY, EGYPTIAN_CAT, TENCH)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def val_name(number: int, suffix: str = ".JPEG") -> str:
    return f"ILSVRC2012_val_{number:08d}{suffix}"


def targets_by_name(eval_set) -> dict[str, int]:
    return {item.path.name: item.target for item in eval_set.items}


def write_devkit(path: Path, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def write_kaggle(path: Path, rows: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["ImageId,PredictionString"] + [f"{stem},{wnid} 10 20 30 40 {wnid} 1 2 3 4" for stem, wnid in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ layout 1: class folders


def test_class_folders_use_sorted_wnid_indices(tmp_path):
    for wnid, _, _ in CLASSES:
        touch(tmp_path / wnid / f"{wnid}_a.JPEG")
        touch(tmp_path / wnid / f"{wnid}_b.png")
    touch(tmp_path / KIT_FOX[0] / "notes.txt")  # not an image: ignored
    touch(tmp_path / KIT_FOX[0] / ".hidden.JPEG")
    eval_set = load_eval_set(tmp_path)
    assert eval_set.layout == "folders"
    assert eval_set.labels_file is None
    expected = {f"{wnid}_{x}": index for wnid, index, _ in CLASSES for x in ("a.JPEG", "b.png")}
    assert targets_by_name(eval_set) == expected
    assert [i.path for i in eval_set.items] == sorted(i.path for i in eval_set.items)


def test_class_folders_with_unknown_wnids_are_named(tmp_path):
    touch(tmp_path / KIT_FOX[0] / "a.JPEG")
    touch(tmp_path / "n99999999" / "b.JPEG")
    touch(tmp_path / "n00000001" / "c.JPEG")
    with pytest.raises(DatasetError, match=r"n00000001, n99999999"):
        load_eval_set(tmp_path)


def test_parent_of_val_is_not_read_as_one_class(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    with pytest.raises(DatasetError, match=r"not ImageNet-1k WordNet ids: val; did you mean .*val\?"):
        load_eval_set(tmp_path)


def test_labels_option_with_class_folders_is_refused(tmp_path):
    touch(tmp_path / KIT_FOX[0] / "a.JPEG")
    labels = write_devkit(tmp_path.parent / "gt.txt", [1])
    with pytest.raises(UsageError, match="--labels"):
        load_eval_set(tmp_path, labels)


def test_loose_images_beside_class_folders_are_ambiguous(tmp_path):
    touch(tmp_path / KIT_FOX[0] / "a.JPEG")
    touch(tmp_path / "stray.JPEG")
    with pytest.raises(DatasetError, match="ambiguous"):
        load_eval_set(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(NoImagesError):
        load_eval_set(tmp_path)


# ------------------------------------------------------------------ layout 2: devkit ground truth


def test_devkit_ids_are_converted_from_devkit_order(tmp_path):
    val = tmp_path / "val"
    ids = [wanted[2] for wanted in CLASSES]  # image i has class CLASSES[i - 1]
    for number in range(1, len(ids) + 1):
        touch(val / val_name(number))
    labels = write_devkit(tmp_path / "ILSVRC2012_validation_ground_truth.txt", ids)
    eval_set = load_eval_set(val)
    assert eval_set.layout == "devkit"
    assert eval_set.labels_file == labels.resolve()
    assert targets_by_name(eval_set) == {val_name(n + 1): cls[1] for n, cls in enumerate(CLASSES)}


def test_devkit_subset_and_other_suffixes_are_matched_by_number(tmp_path):
    # Images 2 and 5 only, re-encoded as PNG: line 2 and line 5 of the file apply.
    touch(tmp_path / val_name(2, ".png"))
    touch(tmp_path / val_name(5, ".jpg"))
    labels = write_devkit(tmp_path / "elsewhere" / "gt.txt", [c[2] for c in CLASSES])
    eval_set = load_eval_set(tmp_path, labels)
    assert targets_by_name(eval_set) == {val_name(2, ".png"): ENGLISH_SETTER[1], val_name(5, ".jpg"): TENCH[1]}


def test_devkit_file_found_inside_unpacked_devkit_above(tmp_path):
    val = tmp_path / "imagenet" / "val"
    touch(val / val_name(1))
    write_devkit(tmp_path / "imagenet" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt",
                 [EGYPTIAN_CAT[2]])
    eval_set = load_eval_set(val)
    assert eval_set.layout == "devkit"
    assert targets_by_name(eval_set) == {val_name(1): EGYPTIAN_CAT[1]}


def test_devkit_ids_out_of_range_are_named(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    labels = write_devkit(tmp_path / "gt.txt", [1, 1001, 0])
    with pytest.raises(DatasetError, match=r"line 2: '1001', line 3: '0'"):
        load_eval_set(tmp_path / "val", labels)


def test_images_without_a_label_are_named(tmp_path):
    touch(tmp_path / val_name(1))
    touch(tmp_path / val_name(3))
    touch(tmp_path / "holiday.jpg")
    labels = write_devkit(tmp_path.parent / f"{tmp_path.name}-gt.txt", [1, 2])
    with pytest.raises(DatasetError, match=r"2 image\(s\) .* no label .*: ILSVRC2012_val_00000003.JPEG, holiday.jpg"):
        load_eval_set(tmp_path, labels)


# ------------------------------------------------------------------ layout 3: Kaggle


def test_kaggle_csv_four_levels_above_cls_loc_val(tmp_path):
    root = tmp_path / "imagenet-object-localization-challenge"
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    rows = {Path(val_name(n)).stem: cls[0] for n, cls in enumerate(CLASSES, 1)}
    for stem in rows:
        touch(val / f"{stem}.JPEG")
    labels = write_kaggle(root / "LOC_val_solution.csv", dict(reversed(list(rows.items()))))  # row order is free
    eval_set = load_eval_set(val)
    assert eval_set.layout == "kaggle"
    assert eval_set.labels_file == labels.resolve()
    assert targets_by_name(eval_set) == {val_name(n): cls[1] for n, cls in enumerate(CLASSES, 1)}


def test_kaggle_csv_given_with_labels_option(tmp_path):
    touch(tmp_path / "val" / "ILSVRC2012_val_00000007.JPEG")
    labels = write_kaggle(tmp_path / "solution.csv", {"ILSVRC2012_val_00000007": SIBERIAN_HUSKY[0]})
    eval_set = load_eval_set(tmp_path / "val", labels)
    assert (eval_set.layout, targets_by_name(eval_set)) == ("kaggle", {val_name(7): SIBERIAN_HUSKY[1]})


def test_kaggle_unknown_wnids_are_named(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    labels = write_kaggle(tmp_path / "LOC_val_solution.csv",
                          {"ILSVRC2012_val_00000001": KIT_FOX[0], "ILSVRC2012_val_00000002": "n12345678"})
    with pytest.raises(DatasetError, match="n12345678"):
        load_eval_set(tmp_path / "val", labels)


def test_unknown_label_file_kind(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    (tmp_path / "labels.txt").write_text("kit fox\n")
    with pytest.raises(DatasetError, match="neither the devkit"):
        load_eval_set(tmp_path / "val", tmp_path / "labels.txt")


# ------------------------------------------------------------------ layout 4: flat without labels


def test_flat_folder_without_labels_names_the_three_layouts(tmp_path):
    val = tmp_path / "a" / "b" / "c" / "d" / "val"
    for number in range(1, 4):
        touch(val / val_name(number))
    # Too far up to be searched (5 levels above): must not be used.
    write_devkit(tmp_path / "ILSVRC2012_validation_ground_truth.txt", [1, 2, 3])
    with pytest.raises(DatasetError) as caught:
        load_eval_set(val)
    message = str(caught.value)
    assert "flat folder of 3 images" in message
    for needle in ("WordNet id", "ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv", "--labels"):
        assert needle in message


def test_flat_folder_of_one_image_is_counted_in_the_singular(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    with pytest.raises(DatasetError, match="flat folder of 1 image and"):
        load_eval_set(tmp_path / "val")


# ------------------------------------------------------------------ --limit


def make_items(per_class: dict[int, int]) -> list[EvalItem]:
    return sorted((EvalItem(Path(f"{c:04d}/{i:03d}.JPEG"), c) for c, n in per_class.items() for i in range(n)),
                  key=lambda item: item.path)


def test_limit_is_balanced_deterministic_and_in_order():
    items = make_items({c: 10 for c in range(50)} | {50: 3})
    subset = balanced_subset(items, 120)
    counts = Counter(item.target for item in subset)
    assert len(subset) == 120 and len(set(subset)) == 120
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 51
    assert subset == balanced_subset(list(items), 120)
    assert subset == sorted(subset, key=items.index)


def test_small_limit_spreads_over_classes_not_the_first_ones():
    items = make_items({c: 2 for c in range(100)})
    subset = balanced_subset(items, 10)
    assert len({item.target for item in subset}) == 10
    assert {item.target for item in subset} != set(range(10))


def test_limit_applies_after_layout_and_keeps_total(tmp_path):
    for wnid, _, _ in CLASSES:
        for n in range(4):
            touch(tmp_path / wnid / f"{n}.JPEG")
    eval_set = load_eval_set(tmp_path, limit=7)
    assert (len(eval_set.items), eval_set.total) == (7, 20)
    assert max(Counter(i.target for i in eval_set.items).values()) == 2
    assert eval_set.items == load_eval_set(tmp_path, limit=7).items
    assert len(load_eval_set(tmp_path, limit=1000).items) == 20


def test_blank_line_inside_devkit_ground_truth_is_an_error_not_a_shift(tmp_path):
    # Line i is the class of image i: skipping a blank line would move every later label by one.
    for number in range(1, 5):
        touch(tmp_path / "val" / val_name(number))
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n\n3\n4\n\n")
    with pytest.raises(DatasetError, match="line 3"):
        load_eval_set(tmp_path / "val")


def test_trailing_blank_lines_of_devkit_ground_truth_are_fine(tmp_path):
    for number in range(1, 3):
        touch(tmp_path / "val" / val_name(number))
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n\n\n")
    assert load_eval_set(tmp_path / "val").layout == "devkit"


def test_kaggle_header_may_be_quoted(tmp_path):
    touch(tmp_path / "val" / val_name(1))
    (tmp_path / "LOC_val_solution.csv").write_text(
        '"ImageId","PredictionString"\nILSVRC2012_val_00000001,"n01440764 1 2 3 4"\n')
    eval_set = load_eval_set(tmp_path / "val")
    assert eval_set.layout == "kaggle" and [item.target for item in eval_set.items] == [0]


def test_a_lone_misnamed_class_folder_gets_no_did_you_mean_hint(tmp_path):
    # "did you mean DIR/N01440764?" pointed into a folder of images, not at a folder of class folders.
    touch(tmp_path / "val" / "N01440764" / val_name(1))
    with pytest.raises(DatasetError) as caught:
        load_eval_set(tmp_path / "val")
    assert "did you mean" not in str(caught.value) and "N01440764" in str(caught.value)
    assert "lower case" in str(caught.value)
