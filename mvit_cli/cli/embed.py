"""`mvit embed`: the pooled features of images (the classifier's input), for similarity search and deduplication."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from mvit_cli.cli._options import (
    Backend,
    BackendOpt,
    BatchSizeOpt,
    CacheDirOpt,
    Device,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    DownloadTimeoutOpt,
    FilesFromOpt,
    MaxDownloadOpt,
    OfflineOpt,
    SourceOpt,
    VariantOpt,
    WeightsOpt,
    WorkersOpt,
)
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, Terminated


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_command)


def embed_command(
    output_file: Annotated[
        Path,
        typer.Option("--output", "-o", dir_okay=False, help="The .npz file to write: arrays `paths` (one per image) "
                     "and `features` ([images, F] float32).", show_default=False),
    ],
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(help="Image files, folders (searched recursively), glob patterns, http(s) URLs, or - for one "
                       "image on stdin.", metavar="PATH", show_default=False),
    ] = None,
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = Backend.torch,
    dtype: DtypeOpt = Dtype.float32,
    files_from: FilesFromOpt = None,
    max_download_mb: MaxDownloadOpt = 50.0,
    download_timeout: DownloadTimeoutOpt = 30.0,
    no_recursive: Annotated[
        bool, typer.Option("--no-recursive", help="Take only the images directly inside each folder.")
    ] = False,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Compute image embeddings: the pooled features in front of the classifier, one row per image.

    F = 320 / 384 / 640 for XXS / XS / S. Inputs as for classify (files, folders, globs, URLs, stdin,
    --files-from). Inputs that cannot be read or decoded are listed on stderr and left out (exit code 3); the
    `paths` array names the rows that are there. The features run on the torch backend. Under torchrun each
    process embeds its share and rank 0 writes the file, rows in input order. Ctrl-C writes the rows done so
    far (exit code 130).

    Examples:

      mvit embed photos/ -o photos.npz

      mvit embed --files-from list.txt --variant xxs -o feats.npz

      python -c "import numpy; d = numpy.load('photos.npz'); print(d['paths'][:3], d['features'].shape)"
    """
    from mvit_cli import api
    from mvit_cli.cli import output
    from mvit_cli.cli._jobs import Job, gather_inputs
    from mvit_cli.pipeline.sources import ReadPolicy
    from mvit_cli.safe_output import check_output, identity

    job = Job(device.value)
    interrupted: KeyboardInterrupt | None = None
    names: list[str] = []
    rows: list = []
    failed = 0
    try:
        inputs = gather_inputs(paths or [], files_from, not no_recursive, output.warn, ReadPolicy())
        protected = inputs.identities() | ({identity(weights)} if weights else set())
        check_output(output_file, "--output", protected)
        classifier = api.load(
            variant.value if variant else None, source.value if source else None, weights, job.device,
            backend.value, cache_dir, offline, dtype.value, warn=output.warn,
            progress=job.is_main and output.progress_enabled(),
        )
        if dtype is Dtype.auto and job.is_main:
            output.warn(f"--dtype auto: running in {classifier.dtype}")
        with job.signals(), inputs.stream() as stream:
            batches = classifier.iter_embed(stream, batch_size, workers, max_download_bytes=int(max_download_mb * 1e6),
                download_timeout=download_timeout,
                                            job=job.distributed, total=inputs.count)
            try:
                for batch in batches:
                    for embedding in batch:
                        if embedding.error is None:
                            names.append(embedding.path)
                            rows.append(embedding.features)
                        else:
                            failed += 1
                            output.warn(f"failed: {output.printable(embedding.path)}: {embedding.error}")
            except KeyboardInterrupt as exc:  # alone (not under torchrun): keep what is done
                interrupted = exc
        if job.is_main:
            _save(output_file, names, rows, classifier.num_features)
            partial = " (partial: interrupted)" if interrupted or job.stopped_code else ""
            output.warn(f"wrote {len(rows):,} embeddings of {classifier.num_features} features to "
                        f"{output_file}{partial}")
    finally:
        job.close()
    if isinstance(interrupted, Terminated):
        raise interrupted
    if interrupted is not None:
        return EXIT_INTERRUPTED
    if job.stopped_code is not None:
        return job.stopped_code
    if failed:
        output.warn(f"{failed} input(s) could not be embedded and are left out")
        return EXIT_PARTIAL
    return EXIT_OK


def _save(path: Path, names: list[str], rows: list, width: int) -> None:
    """Write the .npz in one piece: to a temporary file beside it, then renamed over it."""
    import numpy as np

    features = np.stack(rows).astype(np.float32) if rows else np.empty((0, width), dtype=np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            np.savez(file, paths=np.array(names, dtype=str), features=features)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
