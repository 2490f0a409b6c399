"""How big `classify --report` gets for a big job, and whether a browser still opens it.

    .venv/bin/python benchmarks/report_size.py                       # 10,000 images, ~3-5 min on 2 cores
    .venv/bin/python benchmarks/report_size.py --images 2000 --explain
    .venv/bin/python benchmarks/report_size.py --generated           # generated pictures instead of photos

Classifies `--images` inputs (the photos of ../shared/imagenet-sample-100 repeated through symlinks, or
generated 500 x 375 pictures; random XXS weights: the report's size does not depend on what the weights say)
with `mvit classify --files-from LIST --report`, in a subprocess, and prints: the report's size in all and per
image, how much of it is thumbnails (their base64 data URIs), the time of the whole command and what the report
costs (the same command without --report, run before it). With chromium and Selenium present (as for the tests),
it then opens the report from disk in headless chromium and times the load, a re-sort of all cards by
confidence, and a filter by one class.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import DEFAULT_IMAGES, _links, _photos, _weights  # the same photos and weights (benchmarks/ is on the path)


def _classify(weights: Path, listing: Path, out: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "mvit_cli", "classify", "--files-from", str(listing), "--weights",
               str(weights), "--format", "jsonl", "-o", str(out), *extra]
    start = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"classify failed ({done.returncode}): {done.stderr[-800:]}")
    return time.monotonic() - start


def _open_in_chromium(report: Path) -> dict[str, float] | None:
    # The headless-browser setup is the tests' (tests/browser.py: chromium discovery and flags), the one thing this
    # benchmark takes from tests/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, unavailable

    reason = unavailable()
    if reason is not None:
        print(f"(not opened in a browser: {reason})")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(300)
        start = time.monotonic()
        driver.get(report.as_uri())  # returns once the load event has fired
        loaded = time.monotonic() - start
        sort = driver.execute_script(
            "const t = performance.now(); const o = document.getElementById('order');"
            "o.value = 'confidence-desc'; o.dispatchEvent(new Event('change'));"
            "document.body.offsetHeight; return performance.now() - t;") / 1000
        filter_ = driver.execute_script(
            "const t = performance.now(); const l = document.getElementById('label');"
            "l.value = l.options[1].value; l.dispatchEvent(new Event('change'));"
            "document.body.offsetHeight; return performance.now() - t;") / 1000
        heap = driver.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0")
        return {"load_s": loaded, "sort_s": sort, "filter_s": filter_, "js_heap_mb": heap / 1e6}
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--photos", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--generated", action="store_true", help="generated pictures, not the sample photos")
    parser.add_argument("--explain", action="store_true", help="with heatmaps (classify --report --explain)")
    parser.add_argument("--keep", type=Path, help="copy the report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mvit-report-size-") as tmp:
        folder = Path(tmp)
        photos = _photos(folder, folder / "none" if args.generated else args.photos)
        links = _links(folder / "links", photos, args.images)
        listing = folder / "list.txt"
        listing.write_text("".join(f"{link}\n" for link in links))
        weights = _weights(folder, "xxs")
        report = folder / "report.html"
        print(f"{args.images:,} inputs: {len(photos)} {'generated pictures' if args.generated else 'photos'} "
              f"({'generated' if args.generated or not args.photos.is_dir() else args.photos}) repeated")
        plain = _classify(weights, listing, folder / "plain.jsonl", [])
        with_report = _classify(weights, listing, folder / "out.jsonl",
                                ["--report", str(report), *(["--explain"] if args.explain else [])])
        html = report.read_text(encoding="utf-8")
        size = report.stat().st_size
        thumbnails = sum(len(m) for m in re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", html))
        print(f"report: {size / 1e6:.1f} MB, {size / args.images / 1e3:.2f} KB per image, of which thumbnails "
              f"{thumbnails / args.images / 1e3:.2f} KB (base64; {thumbnails / size:.0%} of the file)")
        print(f"classify: {plain:.1f} s without --report, {with_report:.1f} s with it"
              f"{' and --explain' if args.explain else ''}")
        opened = _open_in_chromium(report)
        if opened:
            print(f"chromium: loaded in {opened['load_s']:.1f} s; re-sorting all cards by confidence "
                  f"{opened['sort_s']:.2f} s, filtering by a class {opened['filter_s']:.2f} s; JS heap "
                  f"{opened['js_heap_mb']:.0f} MB")
        if args.keep:
            args.keep.write_bytes(report.read_bytes())


if __name__ == "__main__":
    main()
