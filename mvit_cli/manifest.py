"""The weight manifest: which published file serves each (variant, source), how to verify it, how to
preprocess for it, and the accuracy published for it.

The facts live in one TOML file, `weights/manifest.toml` at the repository root, shipped inside the wheel as
`mvit_cli/data/manifest.toml`; this module only reads and validates it. Every fact there carries its origin.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvit_cli.errors import UsageError

if TYPE_CHECKING:
    from mvit_cli.preprocess import Preprocessing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SOURCES: tuple[str, ...] = ("timm", "apple")  # the first is the default
VARIANTS: tuple[str, ...] = ("xxs", "xs", "s")
DEFAULT_SOURCE = SOURCES[0]
DEFAULT_VARIANT = "s"

# The preprocessing protocol a checkpoint format was trained/evaluated with, named by its weight source.
# ml-cvnets' own eval recipe (resize 288 bilinear, crop 256) is the one transformers' processor copies. mvit's own
# format records its source in the file's metadata.
FORMAT_SOURCE: dict[str, str | None] = {"mvit": None, "timm": "timm", "transformers": "apple", "cvnets": "apple"}

# How a download is verified: against the sha256 written in the manifest, or (where mvit could not establish
# it) against the LFS sha256 the hub reports for the pinned commit (its ETag).
SHA256_ORIGINS = ("manifest", "hub-etag")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")

# Installed wheel: mvit_cli/data/manifest.toml (pyproject force-include). Source or editable checkout:
# <repo>/weights/manifest.toml, the file that is edited.
_PACKAGED = Path(__file__).resolve().parent / "data" / "manifest.toml"
_CHECKOUT = Path(__file__).resolve().parent.parent / "weights" / "manifest.toml"


@dataclass(frozen=True)
class WeightEntry:
    """One published weight file and everything needed to fetch, verify and use it."""

    variant: str
    source: str
    repo_id: str
    revision: str  # a full commit hash where established, else a branch name
    filename: str
    sha256: str | None  # known sha256 of the file; None: verified against the hub's LFS sha256 instead
    sha256_origin: str  # "manifest" or "hub-etag"
    size: int | None  # exact size in bytes where established
    size_approx: str  # as the hub's file listing shows it, e.g. "5.14 MB"
    format: str  # checkpoint key layout: "timm" or "transformers"
    channel_order: str  # input channel order the checkpoint was trained with: "RGB" or "BGR"
    license: str
    license_url: str

    @property
    def pinned(self) -> bool:
        """Whether the revision is an immutable commit hash (not a branch that can move)."""
        return bool(_COMMIT.fullmatch(self.revision))

    @property
    def page_url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision}/{self.filename}"

    @property
    def label(self) -> str:
        """Short human name, e.g. "timm/mobilevit_xxs.cvnets_in1k model.safetensors"."""
        return f"{self.repo_id} {self.filename}"


def manifest_path() -> Path:
    """The manifest file in use: the wheel's packaged copy, else the checkout's weights/manifest.toml."""
    for candidate in (_PACKAGED, _CHECKOUT):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"weight manifest not found (looked for {_PACKAGED} and {_CHECKOUT}); the mvit installation is incomplete"
    )


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    with manifest_path().open("rb") as f:
        data = tomllib.load(f)
    _validate(data)
    return data


def reload() -> None:
    """Forget the manifest read so far: the next lookup reads `manifest_path()` again."""
    _load.cache_clear()


def _validate(data: dict[str, Any]) -> None:
    """Fail loudly on a malformed manifest: it is package data, so any error here is a bug in mvit."""
    for source in SOURCES:
        src = data["sources"][source]
        for key in ("format", "channel_order", "license", "license_url", "preprocessing"):
            if key not in src:
                raise ValueError(f"manifest: sources.{source} lacks {key!r}")
        for variant in VARIANTS:
            w = data["weights"][source][variant]
            where = f"manifest: weights.{source}.{variant}"
            origin = w.get("sha256_origin")
            if origin not in SHA256_ORIGINS:
                raise ValueError(f"{where}: sha256_origin must be one of {SHA256_ORIGINS}, not {origin!r}")
            if origin == "manifest" and not _SHA256.fullmatch(w.get("sha256", "")):
                raise ValueError(f"{where}: sha256_origin is 'manifest' but sha256 is not 64 lowercase hex digits")
            if origin == "hub-etag" and "sha256" in w:
                raise ValueError(f"{where}: has a sha256, so its sha256_origin must be 'manifest'")
            for key in ("repo_id", "revision", "filename", "size_approx"):
                if not isinstance(w.get(key), str) or not w[key]:
                    raise ValueError(f"{where}: {key!r} missing")
    if set(data["published"]) != set(VARIANTS):
        raise ValueError("manifest: [published] must list exactly the variants " + ", ".join(VARIANTS))
    for dataset, figures in data.get("published_sets", {}).items():
        for variant in VARIANTS:
            entry_ = figures.get(variant)
            if not isinstance(entry_, dict) or not all(isinstance(entry_.get(k), float) for k in ("top1", "top5")):
                raise ValueError(f"manifest: published_sets.{dataset}.{variant} needs top1 and top5")
        if not isinstance(figures.get("reference"), str):
            raise ValueError(f"manifest: published_sets.{dataset} lacks a reference")


def _check_names(variant: str, source: str) -> None:
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if source not in SOURCES:
        raise UsageError(f"unknown weight source {source!r}; expected one of {', '.join(SOURCES)}")


def title(variant: str) -> str:
    """How a variant is named for people: "MobileViT-XXS"."""
    return f"MobileViT-{variant.upper()}"


def source_for(checkpoint_format: str, recorded_source: str | None = None) -> str:
    """The weight source whose protocol applies to a checkpoint of this format (mvit files: the one they record)."""
    source = FORMAT_SOURCE.get(checkpoint_format) or recorded_source or DEFAULT_SOURCE
    _check_names(VARIANTS[0], source)
    return source


def entry(variant: str, source: str) -> WeightEntry:
    """The published weight file for (variant, source)."""
    _check_names(variant, source)
    data = _load()
    src = data["sources"][source]
    w = data["weights"][source][variant]
    return WeightEntry(
        variant=variant,
        source=source,
        repo_id=w["repo_id"],
        revision=w["revision"],
        filename=w["filename"],
        sha256=w.get("sha256"),
        sha256_origin=w["sha256_origin"],
        size=w.get("size"),
        size_approx=w["size_approx"],
        format=src["format"],
        channel_order=src["channel_order"],
        license=src["license"],
        license_url=src["license_url"],
    )


def entries() -> list[WeightEntry]:
    """Every (source, variant) entry, sources in SOURCES order, variants in VARIANTS order."""
    return [entry(variant, source) for source in SOURCES for variant in VARIANTS]


def preprocessing(source: str) -> Preprocessing:
    """The evaluation protocol the weights of `source` were published with."""
    from mvit_cli.preprocess import Preprocessing  # imports torch and Pillow: only when needed

    _check_names(VARIANTS[0], source)
    p = _load()["sources"][source]["preprocessing"]
    return Preprocessing(
        resize_shorter=int(p["resize_shorter"]),
        interpolation=str(p["interpolation"]),
        crop_size=int(p["crop_size"]),
        mean=tuple(float(v) for v in p["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in p["std"]),  # type: ignore[arg-type]
        crop_rounding=str(p["crop_rounding"]),
    )


def preprocessing_crop_pct(source: str) -> float | None:
    """The crop fraction `source`'s protocol is stated with (timm: 0.9), or None where it is stated as sizes."""
    _check_names(VARIANTS[0], source)
    value = _load()["sources"][source]["preprocessing"].get("crop_pct")
    return float(value) if value is not None else None


def published(variant: str) -> dict[str, dict[str, Any]]:
    """Published ImageNet-1k accuracies (%) of `variant`, keyed by where they were published.

    Example: {"timm": {"top1": 78.298, "top5": 94.168, "protocol": ..., "reference": ...},
              "paper": {"top1": 78.4, "reference": ...}, "mmpretrain": {...}}
    """
    _check_names(variant, SOURCES[0])
    return {name: dict(values) for name, values in _load()["published"][variant].items()}


def published_on(dataset: str, variant: str) -> dict[str, dict[str, Any]]:
    """Published accuracies (%) of `variant` on a test or label set, keyed by where they were published, in the
    shape of `published()`. `dataset` is a `mvit eval --dataset` name; "imagenet" is ImageNet val (`published`).
    A set without published figures gives {}.

    Example: published_on("real", "xxs") == {"timm": {"top1": 76.604, "top5": 92.677, "protocol": ...,
    "reference": "timm results/results-imagenet-real.csv"}}
    """
    if dataset == "imagenet":
        return published(variant)
    _check_names(variant, SOURCES[0])
    figures = _load().get("published_sets", {}).get(dataset)
    if figures is None:
        return {}
    timm_protocol = _load()["published"][variant]["timm"]["protocol"]
    return {"timm": {**figures[variant], "protocol": timm_protocol, "reference": figures["reference"]}}


def source_info(source: str) -> dict[str, Any]:
    """Description, format, channel order and licence of a weight source (without the preprocessing)."""
    _check_names(VARIANTS[0], source)
    return {k: v for k, v in _load()["sources"][source].items() if k != "preprocessing"}
