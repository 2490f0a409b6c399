"""PATH expansion: files, folders, globs and stdin, in a stable order without duplicates."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from mvit_cli.errors import NoImagesError, UsageError
from mvit_cli.pipeline.inputs import STDIN, expand_paths


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(
        tmp_path,
        "photos/b.jpg", "photos/a.JPEG", "photos/c.Png", "photos/notes.txt", "photos/.hidden.jpg",
        "photos/sub/z.webp", "photos/sub/y.BMP", "photos/sub/x.tif", "photos/sub/w.TIFF", "photos/sub/v.gif",
        "photos/.cache/secret.jpg", "photos/sub/deeper/u.jpg", "loose.jpeg", "README",
    )
    return tmp_path


def names(items) -> list[str]:
    return [item.name for item in items]


def test_folder_is_recursive_sorted_and_filtered(tree):
    assert names(expand_paths(["photos"])) == [
        "photos/a.JPEG", "photos/b.jpg", "photos/c.Png",
        "photos/sub/deeper/u.jpg", "photos/sub/v.gif", "photos/sub/w.TIFF", "photos/sub/x.tif",
        "photos/sub/y.BMP", "photos/sub/z.webp",
    ]


def test_no_recursive_takes_only_the_top_level(tree):
    assert names(expand_paths(["photos"], recursive=False)) == ["photos/a.JPEG", "photos/b.jpg", "photos/c.Png"]


def test_explicit_file_is_taken_whatever_its_name(tree):
    items = expand_paths(["README", "photos/notes.txt"])
    assert names(items) == ["README", "photos/notes.txt"]
    assert items[0].source == Path("README")


def test_arguments_keep_their_order_and_duplicates_go(tree):
    args = ["loose.jpeg", "photos/sub", "photos/b.jpg", "./loose.jpeg", "photos", str(tree / "loose.jpeg")]
    items = expand_paths(args)
    assert names(items) == [
        "loose.jpeg",
        "photos/sub/deeper/u.jpg", "photos/sub/v.gif", "photos/sub/w.TIFF", "photos/sub/x.tif",
        "photos/sub/y.BMP", "photos/sub/z.webp",
        "photos/b.jpg",
        "photos/a.JPEG", "photos/c.Png",  # the rest of photos/, without what came before
    ]


def test_symlinked_file_counts_as_the_same_file(tree):
    os.symlink(tree / "photos" / "b.jpg", tree / "link.jpg")
    assert names(expand_paths(["photos/b.jpg", "link.jpg"])) == ["photos/b.jpg"]


def test_glob_patterns(tree):
    assert names(expand_paths(["photos/*.jpg"])) == ["photos/b.jpg"]
    # notes.txt: not an image name; .hidden.jpg: hidden; the folder sub/ is walked (here not recursively).
    assert names(expand_paths(["photos/*"], recursive=False)) == [
        "photos/a.JPEG", "photos/b.jpg", "photos/c.Png",
        "photos/sub/v.gif", "photos/sub/w.TIFF", "photos/sub/x.tif", "photos/sub/y.BMP", "photos/sub/z.webp",
    ]
    assert names(expand_paths(["photos/**/*.jpg"])) == ["photos/b.jpg", "photos/sub/deeper/u.jpg"]


def test_stdin_is_one_image_named_dash(tree):
    items = expand_paths([STDIN, "loose.jpeg", STDIN], stdin=io.BytesIO(b"image bytes"))
    assert names(items) == ["-", "loose.jpeg"]
    assert items[0].source == b"image bytes"


def test_missing_path_is_a_usage_error(tree):
    with pytest.raises(UsageError, match="no such file or folder: nope.jpg"):
        expand_paths(["loose.jpeg", "nope.jpg"])


def test_nothing_found_is_no_images_error(tree):
    (tree / "empty").mkdir()
    with pytest.raises(NoImagesError, match="no images found"):
        expand_paths(["empty"])
    with pytest.raises(NoImagesError):
        expand_paths(["photos/*.png"])  # a glob matching nothing (c.Png does not match *.png on Linux)
    with pytest.raises(NoImagesError):
        expand_paths(["empty", "*.nothing"])
