"""The optimised ways of running the model (runners.prepare) give the plain model's logits, for every backend,
batch size and input size, including sizes that are not multiples of the patch and odd ones."""

from __future__ import annotations

import sys

import pytest
import torch

from mvit_cli import runners, store
from mvit_cli.folding import fold_batchnorm
from mvit_cli.runners import tuning
from mvit_cli.runners.torch_cpu import same_shape_chunks
from mvit_cli.runners.torch_device import FullFloat32
from mvit_cli.errors import UsageError
from mvit_cli.model import build_model
from mvit_cli.random_weights import randomize_, structured_images

TOLERANCE = 1e-4

# (batch, height, width): 64 and 128 need no resize inside; 224 resizes stage 5 (7x7 -> 8x8); 97 and 80x112 are
# odd / non-square and resize at several stages. Batch > 1 goes through the one-image-per-core path.
SHAPES = [(1, 64, 64), (3, 64, 64), (2, 97, 97), (2, 80, 112), (1, 224, 224), (3, 128, 128)]


@pytest.fixture(scope="module")
def model():
    return randomize_(build_model("xxs"), seed=5)


@pytest.fixture(scope="module")
def torch_runner(model):
    return runners.TorchCpuRunner(model, threads=2)


def reference(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_torch_cpu_runner_matches_the_plain_model(model, torch_runner, shape):
    b, h, w = shape
    x = structured_images(b, 256, seed=b + h)[:, :, :h, :w].contiguous()
    out = torch_runner(x)
    assert out.shape == (b, 1000) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert (out - reference(model, x)).abs().max() <= TOLERANCE
    # The second call at the same shape runs the cached trace: still exact.
    assert (torch_runner(x) - reference(model, x)).abs().max() <= TOLERANCE


def test_each_image_gets_its_own_logits_in_order(model, torch_runner):
    # A batch split across cores must come back in input order, not in completion order.
    x = structured_images(5, 64, seed=11)
    out = torch_runner(x)
    for i in range(5):
        assert (out[i] - reference(model, x[i : i + 1])[0]).abs().max() <= TOLERANCE


def test_single_threaded_runner_and_untraced_runner_match(model):
    x = structured_images(2, 64, seed=2)
    for runner in (runners.TorchCpuRunner(model, threads=1), runners.TorchCpuRunner(model, trace=False)):
        assert (runner(x) - reference(model, x)).abs().max() <= TOLERANCE


def test_a_job_too_small_to_repay_tracing_runs_eagerly(model):
    cpu = torch.device("cpu")
    small = runners.prepare(model, cpu, expected_images=runners.TRACE_MIN_IMAGES - 1)
    x = structured_images(3, 64, seed=4)
    assert (small(x) - reference(model, x)).abs().max() <= TOLERANCE
    assert not small.trace and small.traced_shapes == [] and "eager" in small.description
    for expected in (None, runners.TRACE_MIN_IMAGES, 50_000):  # unknown (bench) or big enough: traced
        runner = runners.prepare(model, cpu, expected_images=expected)
        runner(x)
        assert runner.trace and len(runner.traced_shapes) == 1


def test_per_core_pool_leaves_the_callers_thread_count_alone(model):
    before = torch.get_num_threads()
    runners.TorchCpuRunner(model, threads=2)(structured_images(4, 64, seed=3))
    assert torch.get_num_threads() == before


def test_per_core_pool_threads_stay_single_threaded_after_running(model):
    # Regression: ATen's lazy per-thread init used to reset pool threads to the process default on their first
    # op, so every pool thread ran its own multi-threaded OpenMP team (oversubscribed cores, 2.6x slower).
    runner = runners.TorchCpuRunner(model, threads=2)
    runner(structured_images(4, 64, seed=3))
    assert runner.worker_thread_counts() == [1, 1]


def test_empty_batch_gives_empty_logits(torch_runner):
    assert torch_runner(torch.empty(0, 3, 64, 64)).shape == (0, 1000)


def test_non_float32_input_is_converted(model, torch_runner):
    x = structured_images(1, 64, seed=4)
    out = torch_runner(x.double())
    assert out.dtype == torch.float32
    assert (out - reference(model, x)).abs().max() <= TOLERANCE


def test_preparing_leaves_the_given_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runners.prepare(model, torch.device("cpu"))(structured_images(1, 64))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fold_batchnorm_removes_every_batchnorm_and_stays_exact(model):
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = structured_images(2, 96, seed=6)
    with torch.no_grad():
        assert (folded(x) - reference(model, x)).abs().max() <= TOLERANCE


def test_eager_runner_matches(model):
    # The CUDA / MPS path (eager, channels_last), exercised on the CPU.
    runner = runners.EagerRunner(model, torch.device("cpu"))
    x = structured_images(2, 97, seed=7)
    assert (runner(x) - reference(model, x)).abs().max() <= TOLERANCE


def test_unknown_backend_is_a_usage_error(model):
    with pytest.raises(UsageError, match="backend"):
        runners.prepare(model, torch.device("cpu"), "tensorrt")


def test_onnxruntime_backend_refuses_other_devices(model):
    with pytest.raises(UsageError, match="CPU only"):
        runners.prepare(model, torch.device("cuda"), "onnxruntime")


def test_missing_onnxruntime_is_a_clear_usage_error(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(UsageError, match=r"pip install 'mvit-cli\[onnx\]'"):
        runners.prepare(model, torch.device("cpu"), "onnxruntime")


def test_missing_onnx_package_is_a_clear_usage_error(model, monkeypatch, tmp_path):
    from mvit_cli import export

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UsageError, match=r"onnx package; install it with: pip install 'mvit-cli\[onnx\]'"):
        export.export_onnx(model, tmp_path / "m.onnx", 64, 64)


def test_default_batch_size_and_workers_are_sane():
    assert runners.default_batch_size(torch.device("cpu")) >= 1
    assert runners.default_batch_size(torch.device("cuda")) >= runners.default_batch_size(torch.device("cpu"))
    assert 1 <= runners.default_workers() <= 4


# ------------------------------------------------------------------------------------------------ onnxruntime

@pytest.fixture(scope="module")
def needs_onnxruntime():
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def weights_file(model, tmp_path_factory, needs_onnxruntime):
    import safetensors.torch

    path = tmp_path_factory.mktemp("weights") / "xxs.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path), metadata={"format": "mvit", "variant": "xxs",
                                                                      "source": "timm"})
    return path


@pytest.fixture(scope="module")
def ort_runner(model, weights_file):
    return runners.prepare(model, torch.device("cpu"), "onnxruntime", weights_path=weights_file)


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 64, 64), (2, 97, 97)], ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_runner_matches_the_plain_model(model, ort_runner, shape):
    b, h, w = shape
    x = structured_images(b, 128, seed=h)[:, :, :h, :w].contiguous()
    out = ort_runner(x)
    assert out.shape == (b, 1000) and out.dtype == torch.float32
    assert (out - reference(model, x)).abs().max() <= TOLERANCE


def test_onnx_export_is_cached_next_to_the_weights_and_reused(model, weights_file, ort_runner):
    ort_runner(structured_images(1, 64))
    path, reused = ort_runner.exports[(64, 64)]
    assert path.parent == weights_file.parent / "mvit-exports" and path.suffix == ".onnx"
    again = runners.prepare(model, torch.device("cpu"), "onnxruntime", weights_path=weights_file)
    again(structured_images(1, 64))
    assert again.exports[(64, 64)] == (path, True)


def test_exports_are_keyed_on_the_weights_content_not_their_timestamp(model, tmp_path, needs_onnxruntime):
    import os
    import stat

    import safetensors.torch

    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(weights))
    os.chmod(weights, 0o600)
    first = runners.prepare(model, torch.device("cpu"), "onnxruntime", weights_path=weights)
    first(structured_images(1, 64))
    old, _ = first.exports[(64, 64)]
    assert stat.S_IMODE(old.stat().st_mode) == 0o600  # a private checkpoint's export stays private

    # Touched, same bytes: the export is still the right one.
    before = weights.stat()
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    touched = runners.prepare(model, torch.device("cpu"), "onnxruntime", weights_path=weights)
    touched(structured_images(1, 64))
    assert touched.exports[(64, 64)] == (old, True)

    # Replaced by other weights of the same size with the timestamp kept (tar and zip extraction do that).
    other = randomize_(build_model("xxs"), seed=11).eval()
    safetensors.torch.save_file(other.state_dict(), str(weights))
    assert weights.stat().st_size == before.st_size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    replaced = runners.prepare(other, torch.device("cpu"), "onnxruntime", weights_path=weights)
    x = structured_images(1, 64)
    new, reused = replaced.exports[(64, 64)] if replaced(x) is not None else (None, None)
    assert new != old and not reused
    assert (replaced(x) - reference(other, x)).abs().max() <= TOLERANCE


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_exports_of_imported_weights_live_in_mvits_cache_folder_and_are_cleared_with_them(
        model, weights_file, tmp_path):
    from mvit_cli import store

    # Given as --cache-dir would be: not the cache root the environment names, so the runtime (which never
    # sees --cache-dir) must recognise the cache from the weights' path.
    root = tmp_path / "cache"
    exports = {}
    for source in ("timm", "apple"):  # two cached files of one variant: clearing one keeps the other's export
        imported, _ = store.import_checkpoint(weights_file, "xxs", source, cache_dir=root)
        runner = runners.prepare(model, torch.device("cpu"), "onnxruntime", weights_path=imported)
        runner(structured_images(1, 64))
        path, reused = runner.exports[(64, 64)]
        assert not reused and path.suffix == ".onnx"
        assert path.parent == root / "mvit" / "exports" / f"imports--mobilevit_xxs-{source}"
        exports[source] = path
    assert not (root / "mvit" / "imports" / "mvit-exports").exists()

    assert store.clear_cache(variant="s", cache_dir=root) == []  # another variant: nothing goes
    assert all(p.is_file() for p in exports.values())
    removed = store.clear_cache(variant="xxs", source="apple", cache_dir=root)
    assert sorted((r.variant, r.source, r.kind) for r in removed) == [("xxs", "apple", "exports"),
                                                                       ("xxs", "apple", "import")]
    assert not exports["apple"].exists() and exports["timm"].is_file()
    store.clear_cache(cache_dir=root)
    assert not exports["timm"].exists() and files_under(root / "mvit") == []


def test_exports_of_downloaded_weights_stay_out_of_the_hf_snapshot_tree(model, weights_file, tmp_path, monkeypatch):
    import hashlib
    import os

    from mvit_cli import loading, manifest, store

    # A download as huggingface_hub lays it out: the snapshot file links to a blob named by its sha256.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("MVIT_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "hf" / "hub"
    entry = manifest.entry("xxs", "timm")
    data = weights_file.read_bytes()
    repo = root / "models--timm--mobilevit_xxs.cvnets_in1k"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / entry.revision / entry.filename
    snapshot.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(entry.revision)
    before = files_under(repo)

    loaded = loading.load_model("xxs", "timm", device="cpu", backend="onnxruntime", offline=True, progress=False)
    assert loaded.weights_path == snapshot
    loaded.run(structured_images(1, 64))
    path, _ = loaded.run.exports[(64, 64)]
    assert path.parent == root / "mvit" / "exports" / repo.name and path.is_file()
    assert files_under(repo) == before  # nothing of mvit's inside huggingface_hub's repo folder

    store.clear_cache(variant="xxs", source="apple")
    assert path.is_file()
    removed = store.clear_cache(variant="xxs", source="timm")
    assert sorted(r.kind for r in removed) == ["download", "exports"]
    assert not path.exists() and not repo.exists()


def test_a_file_outside_any_cache_keeps_its_exports_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "mine" / "w.safetensors"
    assert store.export_folder(weights) == tmp_path / "mine" / "mvit-exports"
    # Under the configured cache root, but neither a download nor an import: mvit's folder all the same.
    in_root = tmp_path / "cache" / "w.safetensors"
    assert store.export_folder(in_root) == tmp_path / "cache" / "mvit" / "exports" / "other"


def test_cuda_calls_compute_in_full_float32_and_restore_the_flags():
    # The flags are plain settings, so this runs without a GPU: inside a CUDA call TF32 is off, afterwards the
    # user's choice is back.
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        with FullFloat32(torch.device("cuda")):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _fusion_groups_in_last_graph() -> int:
    graph = torch.jit.last_executed_optimized_graph()
    return sum(1 for node in graph.nodes() if node.kind() == "prim::oneDNNFusionGuard")


@pytest.mark.skipif(not tuning.onednn_fusion_wanted(), reason="this torch build has no oneDNN Graph")
def test_onednn_fusion_is_on_by_default_really_fuses_and_stays_exact(model):
    runner = runners.TorchCpuRunner(model, threads=1)
    assert runner.fuse and "oneDNN Graph fusion" in runner.description
    x = structured_images(2, 97, seed=12)  # sides that resize inside: the fused graph keeps the interpolations
    out = runner(x)
    assert _fusion_groups_in_last_graph() > 10  # conv/linear partitions handed to oneDNN, not a no-op switch
    assert (out - reference(model, x)).abs().max() <= TOLERANCE


def test_onednn_fusion_can_be_switched_off(model, monkeypatch):
    monkeypatch.setenv("MVIT_ONEDNN_FUSION", "0")
    runner = runners.TorchCpuRunner(model, threads=1)
    assert not runner.fuse and "oneDNN" not in runner.description
    x = structured_images(1, 64, seed=13)
    out = runner(x)
    assert _fusion_groups_in_last_graph() == 0
    assert (out - reference(model, x)).abs().max() <= TOLERANCE


def test_one_trace_serves_every_batch_size_above_one(model):
    # Batches split into chunks of CPU_MICRO_BATCH; a short last chunk is padded instead of traced anew
    # (a trace costs ~0.5 s). The padding's logits never reach the caller.
    runner = runners.TorchCpuRunner(model, threads=2, micro_batch=2)
    for n in (2, 3, 5, 4):
        x = structured_images(n, 64, seed=20 + n)
        out = runner(x)
        assert out.shape == (n, 1000)
        assert (out - reference(model, x)).abs().max() <= TOLERANCE
    assert len(runner.traced_shapes) == 1


def test_a_lone_last_image_borrows_the_chunks_trace_instead_of_tracing_its_own(model):
    # Regression: a last batch of one image (e.g. 285 images) traced a graph of its own: ~0.5 s for one image.
    runner = runners.TorchCpuRunner(model, threads=2, micro_batch=2)
    x = structured_images(5, 64, seed=40)
    runner(x[:4])
    out = runner(x[4:])
    assert len(runner.traced_shapes) == 1
    assert (out - reference(model, x[4:])).abs().max() <= TOLERANCE
    fresh = runners.TorchCpuRunner(model, threads=2, micro_batch=2)
    single = fresh(x[4:])  # no chunk graph yet: a single image still runs on the chunk's (padded), never its own
    assert sorted(key[0] for key in fresh.traced_shapes) == [2]
    assert torch.equal(single, out)  # the same bits as the lone last image of the longer run


def test_a_single_core_runner_also_runs_every_batch_size_on_one_trace(model):
    # Regression: with one thread (a 1-core machine, OMP_NUM_THREADS=1 under torchrun) every batch ran whole,
    # so each batch size (the pipeline's first batches grow 4, 8, 16, ...) cost a trace of its own.
    runner = runners.TorchCpuRunner(model, threads=1, micro_batch=2)
    for n in (4, 8, 5, 3):
        x = structured_images(n, 64, seed=50 + n)
        assert (runner(x) - reference(model, x)).abs().max() <= TOLERANCE
    assert [key[0] for key in runner.traced_shapes] == [2]


def test_same_shape_chunks_pads_the_last_chunk_with_its_last_image():
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    chunks = same_shape_chunks(x, 2)
    assert [c.shape[0] for c in chunks] == [2, 2, 2]
    assert [c[:, 0, 0, 0].tolist() for c in chunks] == [[0, 1], [2, 3], [4, 4]]
    assert all(c.is_contiguous(memory_format=torch.channels_last) for c in chunks)


def test_a_batch_no_bigger_than_one_chunk_runs_on_all_cores_not_on_one_pool_thread(model):
    # Regression: with two images per chunk, a batch of two became one chunk on one single-threaded pool thread
    # while the other core idled. It runs on the calling thread with every core, at the chunk's own shape.
    runner = runners.TorchCpuRunner(model, threads=2, micro_batch=2)
    for n in (1, 2, 3):
        x = structured_images(n, 64, seed=30 + n)
        assert (runner(x) - reference(model, x)).abs().max() <= TOLERANCE
    assert runner.chunks_submitted == 2  # only the batch of three was split (into two chunks)
    assert sorted(key[0] for key in runner.traced_shapes) == [2]  # one and two images share the chunks' trace


@pytest.mark.parametrize("trace", [True, False], ids=["traced", "eager"])
def test_an_images_logits_are_the_same_bits_however_it_is_batched(trace):
    """The basis of `classify`'s exactness across API, CLI, resume and torchrun: neighbours, batch size and thread
    count never change an image's logits (a graph for 1 image, or eager kernels on other shapes, did by ~1e-6)."""
    s = randomize_(build_model("s"), seed=4).eval()
    x = structured_images(7, 128, seed=60)
    runner = runners.TorchCpuRunner(s, threads=2, trace=trace)
    whole = runner(x)
    assert torch.equal(torch.cat([runner(x[i:i + 1]) for i in range(7)]), whole)
    assert torch.equal(runner(x[3:]), whole[3:])
    alone = runners.TorchCpuRunner(s, threads=1, trace=trace)  # one process of a torchrun job (one thread)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(alone(x[2:5]), whole[2:5])
    finally:
        torch.set_num_threads(saved)


def test_onednn_fusion_stays_off_on_cpus_it_was_not_measured_on(model, monkeypatch):
    monkeypatch.setattr(tuning.platform, "machine", lambda: "aarch64")
    assert not tuning.onednn_fusion_wanted()
    assert not runners.TorchCpuRunner(model, threads=1).fuse
