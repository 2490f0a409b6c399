"""The weight store: published weights downloaded into the Hugging Face cache, checkpoints imported by hand,
their verification, and the exports made from them. Local files first; the hub only when a file is missing.

Inside the cache root (`config.py` says which folder that is):

    models--timm--mobilevit_s.cvnets_in1k/...           huggingface_hub's layout (downloads.py)
    mvit/imports/mobilevit_<variant>-<source>.*         `mvit import`ed weights (imports.py)
    mvit/verified/<name>.json                           verification markers (verify.py)
    mvit/exports/<origin>/...                           onnxruntime exports of the cached weights (exports.py)

`resolve.py` decides which file serves (variant, source); `admin.py` lists and clears the store. Nothing here
prints: what happens on the way reaches a `warn` callback.
"""

from mvit_cli.store.admin import clear_cache, list_cache
from mvit_cli.store.config import cache_root, describe_root, endpoint, offline_from_env
from mvit_cli.store.downloads import Download
from mvit_cli.store.exports import cache_exports_folder, export_folder, exports_root, exports_size
from mvit_cli.store.imports import ImportRecord, import_checkpoint
from mvit_cli.store.memo import forget
from mvit_cli.store.resolve import cached_entry, cached_file, download, resolve_weights
from mvit_cli.store.verify import CachedFile, sha256_file

__all__ = [
    "CachedFile",
    "Download",
    "ImportRecord",
    "cache_exports_folder",
    "cache_root",
    "cached_entry",
    "cached_file",
    "clear_cache",
    "describe_root",
    "download",
    "endpoint",
    "export_folder",
    "exports_root",
    "exports_size",
    "forget",
    "import_checkpoint",
    "list_cache",
    "offline_from_env",
    "resolve_weights",
    "sha256_file",
]
