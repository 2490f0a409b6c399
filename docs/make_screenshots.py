"""Makes the README's pictures of the reports and of a heatmap: docs/classify-report.png, docs/eval-report.png,
docs/explain.png. Generated pictures only (no photo is committed), random weights (no download).

    .venv/bin/python docs/make_screenshots.py          # needs chromium + chromium-driver and Selenium, as the tests

The weights are random, so the classes named are meaningless; the classifier's bias favours eight classes (the
eval tests' own checkpoint) so that labels vary. For the heatmap, the model is changed so that its class looks only
at the object in the top-right quadrant (tests/test_explain.py's construction): the picture shows what a correct map
of known evidence looks like.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A sky, a ground, a sun and a few shapes, in colours of its own."""
    rng = np.random.default_rng(seed)
    w, h = size
    horizon = int(h * rng.uniform(0.45, 0.7))
    sky_top, sky_bottom = rng.integers(60, 255, 3), rng.integers(120, 255, 3)
    ground = rng.integers(30, 200, 3)
    rows = np.linspace(0, 1, horizon)[:, None, None]
    sky = (sky_top * (1 - rows) + sky_bottom * rows).repeat(w, axis=1)
    land = np.broadcast_to(ground, (h - horizon, w, 3)) * rng.uniform(0.8, 1.0, (h - horizon, w, 1))
    image = Image.fromarray(np.concatenate([sky, land]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    r = int(rng.uniform(14, 30))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, horizon - r))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(200, 256, 3)))
    for _ in range(int(rng.integers(2, 5))):
        x, y = int(rng.uniform(0, w - 60)), int(rng.uniform(horizon - 40, h - 30))
        box = (x, y, x + int(rng.uniform(25, 90)), y + int(rng.uniform(20, 60)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def screenshot(page: Path, out: Path, height: int, scroll_to: str | None = None) -> None:
    from browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, unavailable
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = unavailable()
    if reason:
        raise SystemExit(f"no browser: {reason}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size=1100,{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(page.as_uri())
        if scroll_to:
            driver.execute_script(f"document.querySelector({scroll_to!r}).scrollIntoView()")
        driver.execute_script(  # the images on screen drawn (lazy ones off screen never load)
            "return Promise.all([...document.images].filter(i => { const r = i.getBoundingClientRect();"
            " return r.bottom > 0 && r.top < innerHeight; }).map(i => i.decode().catch(() => 0)))")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    save_small(Image.open(io.BytesIO(png)), out)


def save_small(image: Image.Image, out: Path) -> None:
    """A palette PNG (screenshots have few colours): well under 200 KB."""
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True)
    print(f"{out.relative_to(REPO)}: {out.stat().st_size / 1e3:.0f} KB")


def mvit(folder: Path, *args: object) -> None:
    """mvit run in `folder`, so that the reports name files as a user's would (photos/scene_00.jpg)."""
    subprocess.run([sys.executable, "-m", "mvit_cli", *map(str, args)], check=False, cwd=folder,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    import safetensors.torch
    from eval_helpers import make_checkpoint, make_val_set, write_class_folders
    from test_explain import GIVEN_CLASS, model_looking_at
    from test_preprocess_parity import timm_eval_reference

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = root / "xxs.safetensors"
        model = make_checkpoint(checkpoint, seed=2)
        photos = root / "photos"
        photos.mkdir()
        for i in range(12):
            scene(i).save(photos / f"scene_{i:02d}.jpg", quality=90)
        (photos / "broken.jpg").write_bytes(b"not a picture")
        mvit(root, "classify", "photos", "--weights", checkpoint.name, "--report", "classify.html", "--explain",
             "--format", "json")
        screenshot(root / "classify.html", DOCS / "classify-report.png", 1000)

        val_set = make_val_set(model, root / "staged", 30, seed=5)
        write_class_folders(val_set, root / "val")
        mvit(root, "eval", "val", "--weights", checkpoint.name, "--report", "eval.html", "--format", "json")
        screenshot(root / "eval.html", DOCS / "eval-report.png", 1300)
        screenshot(root / "eval.html", DOCS / "eval-report-classes.png", 1400, scroll_to="#confusions")

        # The heatmap: an object in the top-right quadrant, a model whose class looks only there.
        picture = scene(40, (256, 256))
        ImageDraw.Draw(picture).ellipse((150, 40, 230, 110), fill=(200, 40, 40))
        picture.save(root / "object.png")
        crop = timm_eval_reference(picture, 256, 0.9, "bicubic", (0.0,) * 3, (1.0,) * 3)
        looking = model_looking_at(model, crop, 0, 1, GIVEN_CLASS)
        safetensors.torch.save_file(looking.state_dict(), str(root / "looking.safetensors"),
                                    metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
        mvit(root, "explain", "object.png", "--weights", "looking.safetensors", "-o", "explain.png")
        save_small(Image.open(root / "explain.png"), DOCS / "explain.png")


if __name__ == "__main__":
    main()
