"""HTML reports (`classify --report [--explain]`, `eval --report`) and the thumbnails they are made of.

1. Thumbnails come out of the pipeline from the decode the classification used (bounded, upright, the model's
   pixels unchanged); a URL is fetched once for both.
2. The reports' numbers equal the JSON output (and the CSV files) of the same run, parsed from the HTML; the
   calibration error is recomputed here from the predictions file, the confused pairs too.
3. Hostile file names are text, never markup.
4. In a real headless chromium (tests/browser.py; skipped where it is absent): no console error, no request
   beyond the file itself, every input's top-1 label visible, a screenshot that is not blank, the filter and
   the sorting work.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from image_corpus import encode, exif_rotated_jpeg, smooth_rgb
from PIL import Image

from cli_helpers import invoke
from mvit_cli.pipeline.batching import iter_batches
from mvit_cli.preprocess import Preprocessing


P = Preprocessing(284, "bicubic", 256)

pytestmark = pytest.mark.usefixtures("offline_empty_cache")


# 1. Thumbnails from the pipeline ------------------------------------------------------------------------------


def decoded_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def test_thumbnails_come_from_the_same_decode_and_leave_the_pixels_alone():
    wide = smooth_rgb(200, 90, seed=1)
    upright = smooth_rgb(60, 100, seed=2)  # portrait; stored turned on its side with EXIF orientation 6
    sources = [encode(wide, "PNG"), b"junk", exif_rotated_jpeg(upright), np.asarray(smooth_rgb(20, 10, seed=3))]
    plain = list(iter_batches(sources, P, 4, 2))
    with_thumbnails = list(iter_batches(sources, P, 4, 2, thumbnail_side=32))
    assert len(plain) == len(with_thumbnails) == 1
    (a,), (b,) = plain, with_thumbnails
    assert torch.equal(a.images, b.images) and a.indices == b.indices == [0, 2, 3] and a.failures == b.failures
    assert a.thumbnails == {} and sorted(b.thumbnails) == [0, 2, 3]  # none for the input that failed

    sizes = {position: decoded_jpeg(jpeg).size for position, jpeg in b.thumbnails.items()}
    assert sizes == {0: (32, 14), 2: (19, 32), 3: (20, 10)}  # fits 32 x 32, aspect kept, upright, never enlarged
    # The picture itself: the whole upright image, scaled. Quality-70 JPEG noise on 19 x 32 pixels of a busy
    # picture is ~11 grey levels; the image turned or mirrored is ~70 away.
    thumbnail = np.asarray(decoded_jpeg(b.thumbnails[2]), dtype=np.float64)

    def distance(picture: Image.Image) -> float:
        return float(np.abs(thumbnail - np.asarray(picture.resize((19, 32), Image.Resampling.BICUBIC))).mean())

    assert distance(upright) < 15
    assert distance(upright.transpose(Image.Transpose.ROTATE_180)) > 3 * distance(upright)
    assert distance(upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) > 3 * distance(upright)


def test_thumbnail_side_must_be_positive():
    with pytest.raises(ValueError, match="thumbnail_side"):
        next(iter_batches([b"x"], P, 1, 0, thumbnail_side=0))


# HTML, parsed here with the standard library: the report's markup as a tree ------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Node | None" = None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        """Elements of `tag` whose attributes include `attrs` (class_ matches one of the classes)."""
        found = []
        for node in self.iter():
            if tag is not None and node.tag != tag:
                continue
            ok = True
            for name, value in attrs.items():
                if name == "class_":
                    ok = ok and value in (node.attrs.get("class") or "").split()
                else:
                    ok = ok and node.attrs.get(name.replace("_", "-")) == value
            if ok:
                found.append(node)
        return found

    def find(self, tag: str | None = None, **attrs: str) -> "Node":
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None, f"</{tag}> closes nothing"
        self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse_html(path: Path) -> Node:
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    assert builder.current is builder.root, "an element is left open"
    return builder.root


def assert_self_contained(page: Node) -> None:
    """Nothing to fetch: every URL in the page is a data: URI (or a link within it), the policy forbids the rest."""
    for node in page.iter():
        for name in ("src", "href", "srcset", "poster", "action", "formaction", "data"):
            value = node.attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), (node.tag, name, value[:80])
        assert not any(name.startswith("on") for name in node.attrs), (node.tag, node.attrs)  # no inline handlers
    styles = " ".join(node.text() for node in page.find_all("style"))
    assert "url(" not in styles and "@import" not in styles
    (csp,) = [m.attrs["content"] for m in page.find_all("meta")
              if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "unsafe-inline" not in csp


def jpeg_of(img: Node) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert img.attrs["src"].startswith(prefix)
    return decoded_jpeg(base64.b64decode(img.attrs["src"][len(prefix):]))


def shown(text: str) -> str:
    """A name as reports (and terminals) show it: control characters as escapes."""
    return re.sub("[\x00-\x1f\x7f-\x9f]", lambda m: repr(m.group())[1:-1], text)


# 2. classify --report -----------------------------------------------------------------------------------------

# File names that are markup, quotes and control characters: the report must show them as text.
HOSTILE = ["<img src=x onerror=document.title='pwned'>.png", "quote\"and'apostrophe&amp;.jpg", "new\nline.png"]




@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report-photos")
    for i, name in enumerate(["a.png", "b.jpg", "c.png", *HOSTILE]):
        smooth_rgb(90 + 17 * i, 60 + 9 * i, seed=20 + i).save(folder / name, format="PNG" if "png" in name else "JPEG")
    (folder / "broken.jpg").write_bytes(b"not a picture")
    return folder


@pytest.fixture(scope="module")
def classify_run(photos, xxs_checkpoint, tmp_path_factory):
    """One run: JSON on stdout and the report, with heatmaps (so the one run checks both)."""
    out = tmp_path_factory.mktemp("classify-report")
    report = out / "report.html"
    result = invoke("classify", photos, "--weights", xxs_checkpoint.path, "--format", "json", "--top-k", "3",
                    "--report", report, "--explain", "--workers", "1", "--batch-size", "4")
    assert result.exit_code == 3, result.output  # broken.jpg
    return json.loads(result.stdout), report


def test_classify_report_numbers_equal_the_json_output(classify_run):
    records, report = classify_run
    page = parse_html(report)
    assert_self_contained(page)
    ok = [r for r in records if "predictions" in r]
    failed = [r for r in records if "error" in r]
    assert len(ok) == 6 and len(failed) == 1
    counts = {key: int(page.find(id=f"count-{key}").text().replace(",", "")) for key in ("images", "classified",
                                                                                          "failed")}
    assert counts == {"images": 7, "classified": 6, "failed": 1}

    cards = page.find("section", id="grid").find_all("figure", class_="card")
    assert [card.find(class_="path").text() for card in cards] == [shown(r["path"]) for r in ok]
    for card, record in zip(cards, ok):
        bars = card.find_all("li")
        assert len(bars) == 3
        for bar, p in zip(bars, record["predictions"]):
            assert (int(bar.attrs["data-index"]), bar.find(class_="label").attrs["title"]) == (p["index"], p["wnid"])
            assert float(bar.attrs["data-probability"]) == p["probability"]  # exactly the JSON's number
            assert bar.find(class_="label").text() == p["label"]
            assert float(bar.find("rect").attrs["width"]) == pytest.approx(100 * p["probability"], abs=0.005)
            assert bar.find(class_="p").text() == f"{100 * p['probability']:.1f}%"
        assert card.attrs["data-top1"] == record["predictions"][0]["wnid"]
        assert float(card.attrs["data-confidence"]) == record["predictions"][0]["probability"]
    rows = page.find("section", id="failed").find_all("tr")[1:]
    assert [(row.find(class_="path").text(), row.find(class_="error").text()) for row in rows] == \
        [(shown(r["path"]), r["error"]) for r in failed]


def test_classify_report_thumbnails_are_the_images_and_heatmaps_the_grad_cam(classify_run, photos, xxs_checkpoint):
    from mvit_cli import explain
    from test_explain import reference_gradcam
    from test_preprocess_parity import timm_eval_reference

    records, report = classify_run
    cards = parse_html(report).find("section", id="grid").find_all("figure", class_="card")
    for number, (card, record) in enumerate(zip(cards, [r for r in records if "predictions" in r])):
        original = Image.open(record["path"]).convert("RGB")
        thumbnail = jpeg_of(card.find("img", class_="thumb"))
        scale = min(1.0, 128 / max(original.size))  # fits 128 x 128, never enlarged
        assert thumbnail.size == (round(original.width * scale), round(original.height * scale))
        expected = np.asarray(original.resize(thumbnail.size, Image.Resampling.BICUBIC), dtype=np.float64)
        assert np.abs(np.asarray(thumbnail, dtype=np.float64) - expected).mean() < 8
        heatmap = card.find("img", class_="heat")  # every card has one; two are recomputed here (a backward pass
        if number >= 2:                             # each), the others only decoded
            assert jpeg_of(heatmap).size == (128, 128)
            continue

        # The heatmap: the test's own Grad-CAM of the top-1 on the test's own crop, overlaid and scaled.
        tensor = timm_eval_reference(original, 256, 0.9, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        c, cam, _ = reference_gradcam(xxs_checkpoint.model, tensor, "final_conv", record["predictions"][0]["index"])
        crop = Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))
        wanted = explain.overlay(crop, cam / cam.max()).resize((128, 128), Image.Resampling.BICUBIC)
        heat = np.asarray(jpeg_of(heatmap), dtype=np.float64)
        assert heat.shape == (128, 128, 3)
        assert np.abs(heat - np.asarray(wanted, dtype=np.float64)).mean() < 8
        other = explain.overlay(crop, np.rot90(cam / cam.max()).copy()).resize((128, 128), Image.Resampling.BICUBIC)
        assert np.abs(heat - np.asarray(other, dtype=np.float64)).mean() > \
            np.abs(heat - np.asarray(wanted, dtype=np.float64)).mean()


def test_hostile_file_names_are_text_in_the_report(classify_run):
    _, report = classify_run
    raw = report.read_text(encoding="utf-8")
    assert "<img src=x" not in raw and "&lt;img src=x onerror=document.title=&#x27;pwned&#x27;&gt;.png" in raw
    page = parse_html(report)
    paths = [node.text() for node in page.find_all(class_="path")]
    for name in HOSTILE:
        assert any(path.endswith(shown(name)) for path in paths), name
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in page.find_all("img"))


def test_a_url_is_fetched_once_for_both_its_result_and_its_thumbnail(xxs_checkpoint, photos, tmp_path):
    from http_fixtures import WebServer, body

    picture = (photos / "b.jpg").read_bytes()
    with WebServer() as server:
        url = server.route("/cat.jpg", body(picture, content_type="image/jpeg"))
        result = invoke("classify", url, photos / "a.png", "--weights", xxs_checkpoint.path, "--format", "json",
                        "--report", tmp_path / "r.html", "--workers", "2")
        assert result.exit_code == 0, result.output
        assert [r.path for r in server.requests] == ["/cat.jpg"]
    cards = parse_html(tmp_path / "r.html").find_all("figure", class_="card")
    assert [c.find(class_="path").text() for c in cards] == [url, str(photos / "a.png")]
    assert jpeg_of(cards[0].find("img", class_="thumb")).size == Image.open(photos / "b.jpg").size and \
        max(Image.open(photos / "b.jpg").size) <= 128


@pytest.mark.parametrize("case", ["explain-alone", "resume", "an-input", "same-as-output", "device", "folder"])
def test_report_options_are_checked_before_any_work(case, xxs_checkpoint, photos, tmp_path):
    image = photos / "a.png"
    args = {
        "explain-alone": [image, "--explain"],
        "resume": [image, "--format", "jsonl", "-o", tmp_path / "o.jsonl", "--resume", "--report", tmp_path / "r.html"],
        "an-input": [image, "--report", image],
        "same-as-output": [image, "-o", tmp_path / "o.json", "--report", tmp_path / "o.json"],
        "device": [image, "--report", "/dev/null"],
        "folder": [image, "--report", tmp_path / "missing" / "r.html"],
    }[case]
    before = image.read_bytes()
    result = invoke("classify", *args, "--weights", xxs_checkpoint.path)
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("mvit: error:") and "Traceback" not in message and "\n" not in message
    assert {"explain-alone": "--report", "resume": "--resume", "an-input": "input", "same-as-output": "same file",
            "device": "device", "folder": "does not exist"}[case] in message
    assert image.read_bytes() == before and not (tmp_path / "r.html").exists()


# 4. In a real browser ------------------------------------------------------------------------------------------


def open_report(browser, path: Path) -> None:
    """Open the report from disk and check what every report must be: no error, no request, not blank."""
    url = path.as_uri()
    browser.open(url)
    browser.driver.execute_script("window.scrollTo(0, document.body.scrollHeight); window.scrollTo(0, 0);")
    assert browser.console_errors() == []
    # Every request stays in the file: the page itself and its data: URIs (the images), nothing else at all.
    assert [u for u in browser.requested_urls() if u != url and not u.startswith("data:")] == []
    screenshot = np.asarray(Image.open(io.BytesIO(browser.driver.get_screenshot_as_png())).convert("RGB"))
    colours = np.unique(screenshot.reshape(-1, 3), axis=0)
    assert len(colours) > 100 and screenshot.std() > 20, "the page looks blank"


def test_classify_report_in_a_browser(browser, classify_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    records, report = classify_run
    ok = [r for r in records if "predictions" in r]
    open_report(browser, report)
    driver = browser.driver
    assert driver.title.startswith("mvit classify") and "pwned" not in driver.title  # no name ran as markup

    cards = driver.find_elements(By.CSS_SELECTOR, "#grid .card")
    assert len(cards) == len(ok)
    for card, record in zip(cards, ok):
        driver.execute_script("arguments[0].scrollIntoView()", card)
        assert card.is_displayed()
        assert card.find_element(By.CSS_SELECTOR, ".top1 .label").text == record["predictions"][0]["label"]
        assert card.find_element(By.CSS_SELECTOR, ".path").text == shown(record["path"])
        for img in card.find_elements(By.TAG_NAME, "img"):  # thumbnail and heatmap, decoded by the browser
            assert driver.execute_script("return arguments[0].decode().then(() => arguments[0].naturalWidth)", img) > 0
    failed = driver.find_element(By.ID, "failed").text
    assert all(r["error"] in failed for r in records if "error" in r)

    def visible_paths() -> list[str]:
        return [c.find_element(By.CSS_SELECTOR, ".path").text for c in cards if c.is_displayed()]

    # Sort by confidence, both ways, then back to input order.
    order = Select(driver.find_element(By.ID, "order"))
    order.select_by_value("confidence-desc")
    by_confidence = sorted(ok, key=lambda r: -r["predictions"][0]["probability"])
    assert [c.find_element(By.CSS_SELECTOR, ".path").text
            for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")] == [shown(r["path"]) for r in by_confidence]
    order.select_by_value("confidence-asc")
    assert [float(c.get_attribute("data-confidence")) for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")] \
        == sorted(r["predictions"][0]["probability"] for r in ok)
    order.select_by_value("input")

    # Filter by a class: only its images stay; by text: a hostile name finds itself.
    label = Select(driver.find_element(By.ID, "label"))
    wnid = ok[0]["predictions"][0]["wnid"]
    label.select_by_value(wnid)
    assert visible_paths() == [shown(r["path"]) for r in ok if r["predictions"][0]["wnid"] == wnid]
    assert driver.find_element(By.ID, "shown").text.startswith(f"{len(visible_paths())} of {len(ok)}")
    label.select_by_value("")
    search = driver.find_element(By.ID, "search")
    search.send_keys("onerror")
    assert [p.rsplit("/", 1)[-1] for p in visible_paths()] == [HOSTILE[0]]
    assert browser.console_errors() == []


# 2b. eval --report -------------------------------------------------------------------------------------------

N_EVAL = 12
BROKEN = "<img src=x onerror=document.title='pwned'>.JPEG"


@pytest.fixture(scope="module")
def eval_material(tmp_path_factory):
    from eval_helpers import make_checkpoint, make_val_set

    root = tmp_path_factory.mktemp("eval-report")
    checkpoint = root / "xxs-known.safetensors"
    model = make_checkpoint(checkpoint, seed=5)
    return root, checkpoint, make_val_set(model, root / "staged", N_EVAL, seed=5)


def eval_set(kind: str, root: Path, val_set) -> tuple[Path, list[str]]:
    """The set's folder and the options that say which set it is."""
    from eval_helpers import (choose_targets_among, real_labels_for, subset_classes, write_class_folders,
                              write_devkit, write_folders)

    if kind == "imagenet-devkit":
        return write_devkit(val_set, root / "devkit"), []
    if kind == "real-flat":  # ReaL: several correct classes per image, some images without any (left out)
        flat = root / "flat"
        for file in val_set.files:
            (flat / file.name).parent.mkdir(parents=True, exist_ok=True)
            (flat / file.name).symlink_to(file)
        entries, _ = real_labels_for(val_set)
        (root / "real.json").write_text(json.dumps(entries))
        return flat, ["--dataset", "real", "--real-labels", root / "real.json"]
    if kind == "r-folders":  # ImageNet-R: 200 classes, outputs restricted to them
        classes = subset_classes("r")
        targets = choose_targets_among(val_set.logits, list(classes))
        return write_folders(val_set.files, targets, root / "imagenet-r", classes.__getitem__), ["--dataset", "r"]
    folders = write_class_folders(val_set, root / "folders")
    broken = sorted(folders.iterdir())[0] / BROKEN  # a name that is markup: the failure list shows it as text
    broken.write_bytes(b"\xff\xd8\xff truncated")
    return folders, []


def run_eval_report(kind: str, eval_material, out: Path):
    root, checkpoint, val_set = eval_material
    directory, options = eval_set(kind, out, val_set)
    files = {name: out / f"{name}" for name in ("report.html", "predictions.csv", "per_class.csv")}
    result = invoke("eval", directory, *options, "--weights", checkpoint, "--format", "json", "--workers", "0",
                    "--report", files["report.html"], "--predictions", files["predictions.csv"],
                    "--per-class", files["per_class.csv"])
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout), files


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def expected_calibration(rows: list[dict[str, str]], bins: int = 15):
    """Per bin (images, correct, sum of confidences) and the ECE, from the predictions file: confidence is prob1,
    correct when top1 is one of the targets (Guo et al.'s definition, as the report states it)."""
    images, correct, confidence = np.zeros(bins, int), np.zeros(bins, int), np.zeros(bins)
    for row in rows:
        p = float(row["prob1"])
        b = min(int(p * bins), bins - 1)
        images[b] += 1
        correct[b] += row["top1"] in row["target"].split()
        confidence[b] += p
    used = images > 0
    ece = float((images[used] / images.sum() * np.abs(correct[used] / images[used]
                                                      - confidence[used] / images[used])).sum())
    return images, correct, confidence, ece


def expected_confusions(rows: list[dict[str, str]]) -> list[tuple[int, int, int, list[str]]]:
    """(correct class, predicted class, count, first example paths) of the top-1 mistakes, most frequent first."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        targets = [int(t) for t in row["target"].split()]
        if int(row["top1"]) not in targets:
            for t in targets:
                pairs.setdefault((t, int(row["top1"])), []).append(row["path"])
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:12]
    return [(t, p, len(paths), paths[:4]) for (t, p), paths in ranked]


@pytest.mark.parametrize("kind", ["imagenet-folders-with-a-failure", "imagenet-devkit", "real-flat", "r-folders"])
def test_eval_report_numbers_equal_the_json_and_csv_of_the_same_run(kind, eval_material, tmp_path):
    summary, files = run_eval_report(kind, eval_material, tmp_path)
    page = parse_html(files["report.html"])
    assert_self_contained(page)

    # Accuracy and the run's facts: the JSON summary's values, exactly.
    accuracy = {row.attrs["data-source"]: row for row in page.find("table", id="accuracy-table").find_all("tr")[1:]}
    ours = accuracy.pop("this run")
    for key in ("top1", "top5"):
        cell = ours.find("td", data_key=key)
        assert float(cell.attrs["data-value"]) == summary[key] and cell.text() == f"{summary[key]:.2f}%"
    assert set(accuracy) == set(summary["published"])
    for name, row in accuracy.items():
        cells = row.find_all("td")
        assert [float(c.attrs["data-value"]) if "data-value" in c.attrs else None for c in cells[:2]] == \
            [summary["published"][name].get("top1"), summary["published"][name].get("top5")]
    assert (summary["dataset"], summary["classes"]) == {"real-flat": ("real", 1000), "r-folders": ("r", 200)}.get(
        kind, ("imagenet", 1000))
    for key in ("images", "failed", "dataset", "layout"):
        value = summary[key]
        assert page.find(id=key).text() == (f"{value:,}" if isinstance(value, int) else value)
    run = page.find("table", id="run-table").text()
    assert summary["checkpoint"]["path"] in run and str(summary["input_size"]) in run

    # Per class: the --per-class file's rows, worst top-1 first.
    per_class = read_rows(files["per_class.csv"])
    shown_rows = page.find("table", id="per-class-table").find_all("tr")[1:]
    assert sorted((int(r.attrs["data-index"]), int(r.attrs["data-images"]), int(r.attrs["data-top1"]),
                   int(r.attrs["data-top5"])) for r in shown_rows) == \
        sorted((int(r["index"]), int(r["images"]), int(r["top1_correct"]), int(r["top5_correct"])) for r in per_class)
    accuracies = [int(r.attrs["data-top1"]) / int(r.attrs["data-images"]) for r in shown_rows]
    assert accuracies == sorted(accuracies)

    # Calibration and confusions: recomputed here from the --predictions file.
    predictions = read_rows(files["predictions.csv"])
    assert len(predictions) == summary["images"]
    images, correct, confidence, ece = expected_calibration(predictions)
    bins = page.find("table", id="bins-table").find_all("tr")[1:]
    assert [int(b.attrs["data-images"]) for b in bins] == images.tolist()
    assert [int(b.attrs["data-correct"]) for b in bins] == correct.tolist()
    np.testing.assert_allclose([float(b.attrs["data-confidence"]) for b in bins], confidence, atol=1e-5)
    assert float(page.find(id="ece").attrs["data-value"]) == pytest.approx(ece, abs=1e-5)
    assert 0 < ece < 1 and summary["top1"] < 100  # mistakes exist: the comparisons below are not empty

    confusions = page.find("table", id="confusions-table").find_all("tr")[1:]
    wanted = expected_confusions(predictions)
    assert [(int(r.attrs["data-true"]), int(r.attrs["data-predicted"]), int(r.attrs["data-count"]))
            for r in confusions] == [(t, p, n) for t, p, n, _ in wanted]
    for row, (_, _, _, examples) in zip(confusions, wanted):
        figures = row.find_all("figure")
        assert [f.attrs["title"] for f in figures] == examples
        for figure, path in zip(figures, examples):
            thumbnail = jpeg_of(figure.find("img"))
            assert max(thumbnail.size) <= 96
            stored = Image.open(path).convert("RGB").resize(thumbnail.size, Image.Resampling.BICUBIC)
            assert np.abs(np.asarray(thumbnail, dtype=float) - np.asarray(stored, dtype=float)).mean() < 12
    if kind == "real-flat":
        assert any(len(r["target"].split()) > 1 for r in predictions)  # multi-label images were scored


def test_eval_report_refuses_a_suite_and_unsafe_paths(eval_material, tmp_path):
    root, checkpoint, val_set = eval_material
    directory, _ = eval_set("imagenet-devkit", tmp_path, val_set)
    for args, needle in (
        (["--suite", tmp_path, "--report", tmp_path / "r.html"], "--report"),
        ([directory, "--report", val_set.files[0]], "one of the set's images"),
        ([directory, "--report", tmp_path / "same.csv", "--predictions", tmp_path / "same.csv"], "same file"),
    ):
        result = invoke("eval", *args, "--weights", checkpoint)
        assert result.exit_code == 1 and needle in result.stderr and "Traceback" not in result.stderr, result.output
    assert not (tmp_path / "r.html").exists()


def test_eval_report_in_a_browser(browser, eval_material, tmp_path):
    from selenium.webdriver.common.by import By

    summary, files = run_eval_report("imagenet-folders-with-a-failure", eval_material, tmp_path)
    open_report(browser, files["report.html"])
    driver = browser.driver
    assert driver.find_element(By.ID, "ece").is_displayed()
    assert f"{summary['top1']:.2f}%" in driver.find_element(By.ID, "accuracy").text
    assert BROKEN in driver.find_element(By.ID, "failures").text and "pwned" not in driver.title
    assert "<img src=x" not in files["report.html"].read_text()
    for img in driver.find_elements(By.CSS_SELECTOR, "#confusions img"):
        driver.execute_script("arguments[0].scrollIntoView()", img)
        assert driver.execute_script("return arguments[0].decode().then(() => arguments[0].naturalWidth)", img) > 0

    def column(index: int) -> list[str]:
        return [row.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-value")
                for row in driver.find_elements(By.CSS_SELECTOR, "#per-class-table tbody tr")]

    header = driver.find_elements(By.CSS_SELECTOR, "#per-class-table th")
    driver.execute_script("arguments[0].scrollIntoView()", header[3])
    header[3].click()  # images: ascending, then descending
    assert [int(v) for v in column(3)] == sorted(int(v) for v in column(3))
    header[3].click()
    assert [int(v) for v in column(3)] == sorted((int(v) for v in column(3)), reverse=True)
    header[0].click()
    assert [int(v) for v in column(0)] == sorted(int(v) for v in column(0))
    assert browser.console_errors() == []


def test_sigterm_mid_run_still_writes_the_report_of_what_was_done(xxs_checkpoint, photos, tmp_path):
    """Like every other output, the report is complete and valid after SIGTERM, and says it is partial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from http_fixtures import WebServer, hang

    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    with WebServer() as server:
        stuck = server.route("/stuck.jpg", hang())  # the last input never arrives
        # Four photos first: the pipeline works a batch or two ahead, and they are through before it waits.
        first = [str(photos / name) for name in ("a.png", "b.jpg", "c.png", HOSTILE[1])]
        process = subprocess.Popen(
            [sys.executable, "-m", "mvit_cli", "classify", *first, stuck,
             "--weights", str(xxs_checkpoint.path), "--batch-size", "1", "--workers", "1", "--format", "jsonl",
             "-o", str(out), "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text().count("\n") < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err.decode()
    written = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert 2 <= len(written) <= 4 and stuck not in written
    page = parse_html(report)
    assert "interrupted" in page.find("h1").text()
    assert [c.find(class_="path").text() for c in page.find_all("figure", class_="card")] == written
