"""`mvit explain`: where in an image the evidence for a class is (Grad-CAM), as a picture or as the raw map."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mvit_cli.cli._options import (
    CacheDirOpt,
    Device,
    DeviceOpt,
    DownloadTimeoutOpt,
    MaxDownloadOpt,
    OfflineOpt,
    SourceOpt,
    TableOrJson,
    TableOrJsonOpt,
    VariantOpt,
    WeightsOpt,
)
from mvit_cli.errors import EXIT_OK, EXIT_PARTIAL, ImageDecodeError, UsageError


class Method(str, Enum):
    gradcam = "gradcam"


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)


def explain_command(
    image: Annotated[
        str,
        typer.Argument(help="One image: a file, an http(s) URL, or - for stdin.", metavar="IMAGE",
                       show_default=False),
    ],
    class_: Annotated[
        Optional[str],
        typer.Option("--class", "-c", help="The class whose evidence to show: a WordNet id (n02124075), an output "
                     "index (0-999) or a class name ('Egyptian cat'). Default: the image's top-1.",
                     show_default=False),
    ] = None,
    method: Annotated[
        Method,
        typer.Option("--method", help="gradcam: Grad-CAM (Selvaraju et al. 2017) at final_conv, the last spatial "
                     "feature map (1/32 of the input, 8 x 8 at 256 px)."),
    ] = Method.gradcam,
    output_file: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", dir_okay=False, help="The PNG to write: the image with the heatmap over it "
                     "and the top-k beside it. Default: IMAGE's name + .gradcam.png in the current folder; with "
                     "--format json only when given.", show_default=False),
    ] = None,
    output_format: TableOrJsonOpt = TableOrJson.table,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, max=1000, help="How many classes to list beside the map.")
    ] = 5,
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    max_download_mb: MaxDownloadOpt = 50.0,
    download_timeout: DownloadTimeoutOpt = 30.0,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Show where in an image the evidence for its top-1 class (or --class) lies: a Grad-CAM heatmap.

    The image is read and decoded as classify reads it (EXIF orientation applied), resized and cropped as the
    model sees it; the map is computed at final_conv, the 1x1 convolution to the pooled features and the last
    spatial map before global average pooling (8 x 8 cells of 32 px for a 256 px input). Since only a linear
    classifier follows it, the map is exactly the part of the class score each region contributes (before the
    ReLU). Bright = evidence for the class; dark = none (or against it).

    Output: a PNG of the crop with the map over it and the top-k beside it (--output, or IMAGE's name +
    .gradcam.png); --format json prints the raw map and the top-k instead (and writes the PNG only with
    --output).

    Exit codes: 0 done, 1 usage or setup error, 3 the image cannot be decoded, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM).

    Examples:

      mvit explain cat.jpg

      mvit explain cat.jpg --class n02123045 --output tabby.png

      mvit explain https://example.com/dog.jpg --variant xxs --format json > map.json
    """
    from mvit_cli import api
    from mvit_cli.cli import output
    from mvit_cli.pipeline.inputs import expand_paths
    from mvit_cli.pipeline.sources import ReadPolicy
    from mvit_cli.safe_output import identity

    out = output.Output(output_format.value)
    inputs = expand_paths([image], recursive=False, warn=output.warn, policy=ReadPolicy())
    if len(inputs) != 1:
        raise UsageError(f"explain takes one image; {image} names {len(inputs)} (classify --report --explain "
                         "shows the heatmaps of many)")
    (item,) = inputs
    class_index = _class_index(class_) if class_ is not None else None
    if output_file is None and not out.json:
        output_file = Path(_default_name(item.name))
    if output_file is not None:
        protected = {key for key in (identity(item.source) if isinstance(item.source, Path) else None,
                                     identity(weights) if weights else None) if key is not None}
        _check_picture_output(output_file, protected)

    classifier = api.load(variant.value if variant else None, source.value if source else None, weights,
                          device.value, cache_dir=cache_dir, offline=offline, warn=output.warn, expected_images=1)
    forbidden = frozenset(key for key in (identity(output_file) if output_file else None,) if key is not None)
    try:
        explained = classifier.explain(item, class_index, top_k, max_download_bytes=int(max_download_mb * 1e6),
                                       download_timeout=download_timeout, forbidden_files=forbidden)
    except ImageDecodeError as exc:
        output.warn(f"error: {exc}")
        return EXIT_PARTIAL
    if output_file is not None:
        _save_picture(explained, output_file, method)
    out.emit(_record(explained, classifier, method, output_file), lambda data: _render(out, data))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- parts

_WNID = re.compile(r"n\d{8}")
# Written into every PNG explain makes: an existing image without it is not overwritten (`_check_picture_output`).
SOFTWARE_TAG = "mvit explain"


def _class_index(value: str) -> int:
    """--class as an output index: a WordNet id, an index 0-999, or a class name (case-insensitive, unique)."""
    from mvit_cli import labels

    text = value.strip()
    if _WNID.fullmatch(text):
        index = labels.index_of_wnid(text)
        if index is None:
            raise UsageError(f"--class {value}: not one of the 1000 ImageNet-1k WordNet ids")
        return index
    if text.isdigit():
        if int(text) >= labels.NUM_CLASSES:
            raise UsageError(f"--class {value}: class indices run from 0 to {labels.NUM_CLASSES - 1}")
        return int(text)
    named = [c for c in labels.CLASSES if c.name.casefold() == text.casefold()]
    if len(named) == 1:
        return named[0].index
    if named:
        choices = ", ".join(f"{c.wnid} ({c.lemmas})" for c in named)
        raise UsageError(f"--class {value}: {len(named)} classes have that name; give the WordNet id: {choices}")
    raise UsageError(f"--class {value}: expected a WordNet id (n02124075), an index 0-999 or a class name")


def _default_name(name: str) -> str:
    """IMAGE's file name (or the last part of its URL; "stdin" for -) + ".gradcam.png", as a plain file name
    in the current folder: characters other than letters, digits, "-", "_" and "." become "_"."""
    base = "stdin" if name == "-" else re.split(r"[/?#]", name.rstrip("/"))[-1] if "://" in name else Path(name).name
    stem = Path(base).stem or "image"
    return re.sub(r"[^\w.-]", "_", stem, flags=re.ASCII).lstrip(".")[:100] + ".gradcam.png"


def _check_picture_output(path: Path, protected: set) -> None:
    """`safe_output`'s checks, and: never a file that is not a PNG, never an image explain did not write."""
    from PIL import Image, UnidentifiedImageError

    from mvit_cli.safe_output import UnsafeOutputError, check_output

    if path.suffix.lower() != ".png":
        raise UsageError(f"--output {path}: explain writes a PNG; give the file a .png name")
    check_output(path, "--output", protected, "the image being explained or the weights", refuse_images=False)
    try:
        with Image.open(path) as existing:
            made_here = str(existing.info.get("Software", "")).startswith(SOFTWARE_TAG)
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError):
        return  # nothing there, or not an image: check_output has judged it
    if not made_here:
        raise UnsafeOutputError("--output", path, "it holds an image explain did not make, which mvit will not "
                                "overwrite; choose another file name")


def _save_picture(explained, path: Path, method: Method) -> None:
    from PIL import PngImagePlugin

    from mvit_cli import __version__
    from mvit_cli.explain import render_explanation

    chosen = explained.explained
    title = f"Grad-CAM: {chosen.label} ({100 * chosen.probability:.1f}%)"
    picture = render_explanation(explained.image, explained.explanation,
                                 [(p.label, p.probability) for p in explained.result.predictions], title=title)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"{SOFTWARE_TAG} ({__version__})")
    info.add_text("Description", f"{method.value} at {explained.explanation.layer} for {chosen.wnid} {chosen.label}")
    picture.save(path, "PNG", pnginfo=info)


def _record(explained, classifier, method: Method, output_file: Path | None) -> dict[str, Any]:
    """What --format json prints (README: "Reports and heatmaps")."""
    import numpy as np

    explanation = explained.explanation
    raw = explanation.raw
    height, width = raw.shape
    row, col = (int(i) for i in np.unravel_index(int(np.argmax(raw)), raw.shape))
    model = classifier.model
    return {
        "path": explained.result.path,
        "method": method.value,
        "layer": explanation.layer,
        "variant": model.variant,
        "source": model.source,
        "checkpoint": {"path": str(model.weights_path), "format": model.checkpoint_format},
        "input_size": explained.image.width,
        "class": explained.explained.to_dict(),
        "predictions": [p.to_dict() for p in explained.result.predictions],
        "map": {
            "height": height,
            "width": width,
            "cell_pixels": explained.image.width // width,
            "peak": {"row": row, "col": col, "value": float(raw[row, col])},
            "raw": raw.tolist(),  # ReLU(sum_k alpha_k A_k), before normalisation
            "heatmap": explanation.heatmap.tolist(),  # raw / its maximum: what the picture shows
        },
        "output": str(output_file) if output_file is not None else None,
    }


def _render(out, data: dict[str, Any]) -> None:
    chosen, peak = data["class"], data["map"]["peak"]
    cells = f"{data['map']['height']} x {data['map']['width']} cells of {data['map']['cell_pixels']} px"
    out.line(f"{data['path']}: Grad-CAM of {chosen['label']} ({chosen['wnid']}, rank {chosen['rank']}, "
             f"{100 * chosen['probability']:.1f}%) at {data['layer']}, {cells}")
    if peak["value"] > 0:
        out.line(f"  strongest evidence: the {_region(peak, data['map'])} of the crop (row {peak['row']}, "
                 f"column {peak['col']})")
    else:
        out.line("  no positive evidence for this class anywhere in the image (the map is all zero)")
    for p in data["predictions"]:
        out.line(f"  {p['rank']:>4}. {p['label']} ({p['wnid']}) {100 * p['probability']:.2f}%")
    if data["output"]:
        out.line(f"heatmap: {data['output']}")


def _region(peak: dict[str, Any], grid: dict[str, Any]) -> str:
    """Where a cell lies, in words: "top left", "centre", "bottom right" ..."""
    vertical = ("top", "middle", "bottom")[min(3 * peak["row"] // grid["height"], 2)]
    horizontal = ("left", "centre", "right")[min(3 * peak["col"] // grid["width"], 2)]
    if (vertical, horizontal) == ("middle", "centre"):
        return "centre"
    return f"{vertical} {horizontal}".replace("middle ", "").replace(" centre", "")
