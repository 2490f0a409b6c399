"""`mvit download`, `mvit import`, `mvit cache list`, `mvit cache clear`: the weight files on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mvit_cli.cli._options import (
    CacheDirOpt,
    TableOrJson,
    TableOrJsonOpt,
    Variant,
    VariantOrAll,
    WeightSource,
    WeightSourceOrAll,
)
from mvit_cli.errors import EXIT_OK, EXIT_PARTIAL, MvitError



def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
    app.command("import")(import_command)
    cache = typer.Typer(
        name="cache",
        help="What mvit has in its weight cache: list it, or clear it.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    cache.command("list")(cache_list_command)
    cache.command("clear")(cache_clear_command)
    app.add_typer(cache, name="cache")


def _choices(value: str, names: tuple[str, ...]) -> list[str]:
    return list(names) if value == "all" else [value]


def download_command(
    variant: Annotated[
        VariantOrAll, typer.Option("--variant", "-m", help="Model variant to fetch: xxs, xs, s, or all.")
    ] = VariantOrAll.s,
    source: Annotated[
        WeightSourceOrAll, typer.Option("--source", help="Weight source: timm (the default weights), apple, or all.")
    ] = WeightSourceOrAll.timm,
    output_format: TableOrJsonOpt = TableOrJson.table,
    cache_dir: CacheDirOpt = None,
) -> int:
    """Download weights into the cache and verify their sha256, so later runs need no network.

    Files come from the Hugging Face hub (or the mirror in HF_ENDPOINT), pinned to the commits listed in mvit's
    weight manifest, into huggingface_hub's standard cache (HF_HUB_CACHE, HF_HOME; --cache-dir / MVIT_CACHE
    override). A file already cached and verified is not fetched again, nor one imported by hand that is the
    published file. A file that does not match its sha256 is deleted and reported. For a machine without network:
    run this where there is one, then copy the cache folder (`mvit cache list` shows it) to the cache folder of that
    machine (or point --cache-dir / MVIT_CACHE at the copy).

    Examples:

        mvit download                          # MobileViT-S, timm weights (what `mvit classify` uses)

        mvit download --variant all --source all

        mvit download -m xxs --cache-dir ./weights-cache
    """
    from mvit_cli import manifest, store
    from mvit_cli.cli.output import Output, megabytes, progress_enabled, warn

    out = Output(output_format.value)
    jobs = [(v, s) for s in _choices(source.value, manifest.SOURCES)
            for v in _choices(variant.value, manifest.VARIANTS)]
    files: list[dict] = []
    for v, s in jobs:
        try:
            result = store.download(v, s, cache_dir=cache_dir, progress=progress_enabled(), warn=warn)
        except MvitError as exc:
            if len(jobs) == 1:
                raise
            warn(f"{s} {v}: {exc}")
            files.append({"variant": v, "source": s, "state": "failed", "error": str(exc)})
            continue
        state = "downloaded" if result.downloaded else ("imported" if result.kind == "import" else "cached")
        files.append({"variant": v, "source": s, "state": state, "path": str(result.path), "size_bytes": result.size,
                      "sha256": result.sha256})
        if not out.json:  # as it happens: a long download is followed line by line
            where = "already cached (imported by hand)" if state == "imported" else (
                "downloaded" if result.downloaded else "already cached")
            out.line(f"{s} {v}: {where}, verified (sha256 {result.sha256[:12]}...), {megabytes(result.size)}: "
                     f"{result.path}")
    failures = sum(f["state"] == "failed" for f in files)
    if failures == len(jobs):
        raise MvitError(f"none of the {len(jobs)} weight files could be fetched (reasons above)")
    out.emit({"cache_dir": str(store.cache_root(cache_dir)), "files": files}, render=lambda data: None)
    return EXIT_PARTIAL if failures else EXIT_OK


def import_command(
    file: Annotated[
        Path,
        typer.Argument(help="Checkpoint file: timm, transformers, ml-cvnets or mvit format; .safetensors, .bin, .pt.",
                       exists=True, dir_okay=False, resolve_path=True, show_default=False),
    ],
    variant: Annotated[
        Optional[Variant],
        typer.Option("--variant", "-m", help="Model variant the file must hold \\[default: read from the file]."),
    ] = None,
    source: Annotated[
        Optional[WeightSource],
        typer.Option("--source", help="Weight source whose preprocessing applies \\[default: that of the file's "
                                      "format: timm for timm files, apple for transformers and ml-cvnets files]."),
    ] = None,
    output_format: TableOrJsonOpt = TableOrJson.table,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Bring a checkpoint file into the cache by hand, e.g. on a machine without network.

    The file is loaded first (a file that is not a complete checkpoint of the variant is refused with the
    reason), then stored in the cache as safetensors with mvit's own key names: later runs find it for
    (variant, source) without network and without unpickling anything. If the file is the very one mvit's
    manifest pins (same sha256), that is reported.

    Examples:

        mvit import pytorch_model.bin --variant xxs          # from apple/mobilevit-xx-small: source apple

        mvit import model.safetensors --variant s            # from timm/mobilevit_s.cvnets_in1k: source timm

        mvit import mobilevit_xs.pt --variant xs --source apple
    """
    from dataclasses import asdict

    from mvit_cli import manifest, store
    from mvit_cli.cli.output import Output

    path, record = store.import_checkpoint(file, variant=variant.value if variant else None,
                                           source=source.value if source else None, cache_dir=cache_dir)

    def render(data: dict) -> None:
        published = {True: "yes, it is the file mvit's manifest pins", False: "no (loaded fine, but not the file "
                     "mvit's manifest pins)", None: "unknown (no sha256 known for it)"}[record.matches_manifest]
        out.line(f"imported {record.original_name} ({record.original_format} format) as "
                 f"{manifest.title(record.variant)}, source {record.source}: {path}")
        out.line(f"published file: {published}")

    out = Output(output_format.value)
    out.emit({"path": str(path), **asdict(record)}, render)


def cache_list_command(
    output_format: TableOrJsonOpt = TableOrJson.table,
    verify: Annotated[
        bool, typer.Option("--verify", hidden=True, help="Kept for scripts: every listing hashes every file.")
    ] = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """List the weight files in the cache: variant, source, downloaded or imported, size, state, what it is.

    Every file is hashed now (sha256; ~15 ms for the largest): "verified" means it holds the bytes it must,
    "corrupt" that it does not (it is deleted, and downloaded again, the next time it is needed). A plain copy
    of a download whose expected hash is not known offline is "unverified" and never loaded. "what it is" says
    whether the file is the published one: a download always is; an imported file is only if the original
    file's sha256 was the published file's.

    Examples:

        mvit cache list

        mvit cache list --format json

        MVIT_CACHE=/mnt/weights mvit cache list
    """
    from mvit_cli import store
    from mvit_cli.cli.output import Output, megabytes

    rows = store.list_cache(cache_dir=cache_dir)
    exports_dir, exports_bytes = store.exports_size(cache_dir)
    data = {
        "cache_dir": str(store.cache_root(cache_dir)),
        "files": [{"variant": r.variant, "source": r.source, "kind": r.kind, "state": r.state,
                   "published": r.published, "size_bytes": r.size, "path": str(r.path), "detail": r.detail}
                  for r in rows],
        "exports": {"path": str(exports_dir), "size_bytes": exports_bytes},
    }

    def render(data: dict) -> None:
        from rich.table import Table

        out.line(f"cache folder: {data['cache_dir']}")
        if exports_bytes:
            out.line(f"ONNX exports: {megabytes(exports_bytes)} in {exports_dir}")
        if not rows:
            out.line("no mvit weights cached; get them with `mvit download` or `mvit import FILE`")
            return
        table = Table("variant", "source", "kind", "size", "state", "what it is", "file")
        for r in rows:
            table.add_row(r.variant, r.source, r.kind, megabytes(r.size), r.state, r.provenance, r.detail)
        out.print(table)

    out = Output(output_format.value)
    out.emit(data, render)


def cache_clear_command(
    variant: Annotated[
        VariantOrAll, typer.Option("--variant", "-m", help="Only this variant, or all.")
    ] = VariantOrAll.all,
    source: Annotated[
        WeightSourceOrAll, typer.Option("--source", help="Only this weight source, or all.")
    ] = WeightSourceOrAll.all,
    output_format: TableOrJsonOpt = TableOrJson.table,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Delete mvit's weight files from the cache: downloads and imports, and the ONNX exports made from them.

    Only the files mvit's manifest names are removed from huggingface_hub's cache (other files of the same hub
    repositories stay); they are downloaded again when next needed.

    Examples:

        mvit cache clear                     # everything mvit cached

        mvit cache clear --variant s --source apple
    """
    from mvit_cli import store
    from mvit_cli.cli.output import Output, megabytes

    removed = store.clear_cache(variant=None if variant is VariantOrAll.all else variant.value,
                                source=None if source is WeightSourceOrAll.all else source.value, cache_dir=cache_dir)
    root = str(store.cache_root(cache_dir))

    def render(data: dict) -> None:
        for r in removed:
            out.line(f"removed {r.source} {r.variant} ({r.kind}, {megabytes(r.size)}): {r.path}")
        if not removed:
            out.line(f"nothing to remove in {root}")

    out = Output(output_format.value)
    out.emit({"cache_dir": root, "removed": [{"variant": r.variant, "source": r.source, "kind": r.kind,
                                              "size_bytes": r.size, "path": str(r.path)} for r in removed]}, render)
