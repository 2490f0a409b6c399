"""The onnxruntime backend (optional extra `mvit-cli[onnx]`): an ONNX export of the folded model, run with the
same image-per-core scheme as the torch CPU path.

The export is made once per weights and input size and cached (`export.cached_export`, keyed on the weights'
sha256): in `<cache>/mvit/exports/` for the cache's weights, in `mvit-exports/` beside any other weights file
(`store.exports.export_folder`). Without a weights file, or where nothing is writable, it is made per process.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvit_cli.export import ONNX_OPSET, cached_export, import_onnxruntime, require_onnx
from mvit_cli.runners.base import Pending, PerCorePool, Runner
from mvit_cli.runners.tuning import tune_allocator
from mvit_cli.store.exports import export_folder
from mvit_cli.store.verify import sha256_file

# Images per call of each per-core session: one (measured; see runners/torch_cpu.py, CPU_MICRO_BATCH).
ORT_MICRO_BATCH = 1


class OnnxRuntimeRunner(Runner):
    """onnxruntime on the CPU: one session per input size; a batch is split one image per core like the torch
    path (single-threaded sessions run concurrently), a single image runs on all cores."""

    backend = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, model: nn.Module, weights_path: Path | None = None, export_dir: Path | None = None,
                 threads: int = 1):
        self.ort = import_onnxruntime()
        require_onnx("the onnxruntime backend (it runs an ONNX export of the model)")
        self.model = model.eval()
        self.threads = max(1, threads)
        self.micro_batch = ORT_MICRO_BATCH
        self._sessions: dict[tuple[int, int, int], Any] = {}
        self._lock = threading.Lock()
        self._pool = PerCorePool(self.threads) if self.threads > 1 else None
        self.exports: dict[tuple[int, int], tuple[Path, bool]] = {}  # input size -> (file, reused from cache)
        # The cache is keyed on the weights' bytes; an export keeps their file's permissions (a private
        # checkpoint's export stays private).
        self._folder, self._weights_sha256, self._stem, self._mode = None, None, "model", None
        if weights_path is not None:
            weights_path = Path(weights_path)
            self._folder = Path(export_dir) if export_dir else export_folder(weights_path)
            self._weights_sha256 = sha256_file(weights_path)
            self._stem = weights_path.stem
            self._mode = stat.S_IMODE(os.stat(weights_path).st_mode) & 0o666
        # Exports that cannot be cached live as long as this runner.
        self._scratch = tempfile.TemporaryDirectory(prefix="mvit-exports-")
        tune_allocator()
        self.description = (
            f"onnxruntime {self.ort.__version__}, ONNX opset {ONNX_OPSET}, BatchNorm folded, "
            f"{self.threads} core(s), {self.micro_batch} image(s) per core at a time"
        )

    def describe(self, batch_size: int) -> str:
        if batch_size <= self.micro_batch or self._pool is None:
            return self.description.rsplit(", ", 2)[0] + f", one session on all {self.threads} core(s)"
        return self.description

    def _session(self, height: int, width: int, threads: int) -> Any:
        key = (height, width, threads)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if (height, width) not in self.exports:
                    self.exports[(height, width)] = cached_export(
                        self.model, height, width, "onnx", folder=self._folder, weights_sha256=self._weights_sha256,
                        stem=self._stem, scratch_dir=Path(self._scratch.name), mode=self._mode,
                    )
                options = self.ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.log_severity_level = 3  # errors only: its warnings are not the user's business
                path = self.exports[(height, width)][0]
                session = self.ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                self._sessions[key] = session
        return session

    def _run(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        session = self._session(x.shape[2], x.shape[3], threads)
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.submit(batch).result()

    def submit(self, batch: torch.Tensor) -> Pending:
        """`Runner.submit`: a batch of several chunks is computed in the background."""
        x = batch.detach().to("cpu", torch.float32).contiguous()
        n = x.shape[0]
        if n == 0:
            return Pending.done(torch.empty(0, self.model.output_width))
        if self._pool is None or n <= self.micro_batch:
            return Pending.done(self._run(x, self.threads))
        return self._pool.submit(lambda chunk: self._run(chunk.contiguous(), 1), list(x.split(self.micro_batch)), n)
