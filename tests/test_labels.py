"""The ImageNet-1k class table: invariants always, and the facts against the devkit when ../shared has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvit_cli.labels import CLASSES, NUM_CLASSES, index_of_ilsvrc_id, index_of_wnid

DEVKIT = Path(__file__).resolve().parents[1].parent / "shared" / "devkit"


def test_thousand_unique_sorted_wnids_in_index_order():
    assert len(CLASSES) == NUM_CLASSES
    assert [c.index for c in CLASSES] == list(range(NUM_CLASSES))
    wnids = [c.wnid for c in CLASSES]
    assert wnids == sorted(wnids)
    assert len(set(wnids)) == NUM_CLASSES
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)


def test_ilsvrc_ids_are_a_permutation_not_the_index():
    ids = [c.ilsvrc_id for c in CLASSES]
    assert sorted(ids) == list(range(1, NUM_CLASSES + 1))
    assert ids != list(range(1, NUM_CLASSES + 1))  # the devkit order is not the sorted-wnid order


def test_names_are_the_first_lemma():
    for c in CLASSES:
        assert c.name and c.name == c.lemmas.split(", ")[0]
        assert "\t" not in c.lemmas and "\n" not in c.lemmas


def test_well_known_classes():
    assert CLASSES[0].wnid == "n01440764" and CLASSES[0].name == "tench"
    cat = CLASSES[285]
    assert (cat.wnid, cat.name) == ("n02124075", "Egyptian cat")
    assert CLASSES[999].wnid == "n15075141" and CLASSES[999].name == "toilet tissue"


def test_lookups_round_trip_and_never_raise():
    for c in CLASSES:
        assert index_of_wnid(c.wnid) == c.index
        assert index_of_ilsvrc_id(c.ilsvrc_id) == c.index
    assert index_of_wnid("n00000000") is None
    assert index_of_wnid("") is None
    assert index_of_ilsvrc_id(0) is None
    assert index_of_ilsvrc_id(1001) is None


@pytest.mark.skipif(not (DEVKIT / "map_clsloc.txt").exists(), reason="no ../shared/devkit")
def test_matches_devkit_map_clsloc():
    seen = 0
    for line in (DEVKIT / "map_clsloc.txt").read_text().splitlines():
        wnid, ilsvrc_id, name = line.split()
        c = CLASSES[index_of_wnid(wnid)]
        assert c.ilsvrc_id == int(ilsvrc_id)
        assert c.name.replace(" ", "_") == name  # the devkit spells spaces as underscores
        seen += 1
    assert seen == NUM_CLASSES


@pytest.mark.skipif(
    not (DEVKIT / "imagenet_2012_validation_synset_labels.txt").exists(), reason="no ../shared/devkit"
)
def test_every_validation_label_is_a_class():
    wnids = (DEVKIT / "imagenet_2012_validation_synset_labels.txt").read_text().split()
    assert len(wnids) == 50_000
    assert all(index_of_wnid(w) is not None for w in wnids)
    assert len(set(wnids)) == NUM_CLASSES


def test_matches_timm_synset_list_and_lemmas():
    """timm ships the same WordNet facts as package data (readable without importing timm itself)."""
    from importlib.util import find_spec

    spec = find_spec("timm")  # finds the package without importing it (timm's import needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm not installed")
    info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    assert synsets == [c.wnid for c in CLASSES]
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    assert all(lemmas[c.wnid] == c.lemmas for c in CLASSES)
