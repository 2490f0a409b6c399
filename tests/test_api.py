"""The Python API (`from mvit_cli import load, Classifier`): the same records as `mvit classify --format json`,
any mix of input kinds, embeddings, the reference tensors, pickling to other processes, and a real Dask cluster.

Expected answers are the test's own: the plain model run directly on the reference preprocessing
(test_preprocess_parity.timm_eval_reference), or the CLI's JSON output for the same files.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_corpus import smooth_rgb
from test_preprocess_parity import timm_eval_reference
from cli_helpers import invoke
from mvit_cli import Classifier, Result, load
from mvit_cli.errors import ImageDecodeError

pytestmark = pytest.mark.usefixtures("offline_empty_cache")


def reference(image: Image.Image) -> torch.Tensor:
    """timm's evaluation transform for the timm weights: 256 px, crop 0.9, bicubic, no normalisation."""
    return timm_eval_reference(image.convert("RGB"), 256, 0.9, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (w, h) in enumerate([(120, 90), (64, 160), (300, 200), (97, 97), (200, 120)]):
        path = folder / f"p{i}.{'png' if i % 2 else 'jpg'}"
        smooth_rgb(w, h, seed=i).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def classifier(xxs_checkpoint) -> Classifier:
    return load(weights=xxs_checkpoint.path)


def cli_records(checkpoint: Path, paths: list[Path], *args: str) -> list[dict]:
    result = invoke("classify", *map(str, paths), "--weights", str(checkpoint), "--format", "json",
                    *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_classify_paths_gives_exactly_the_cli_records(classifier, xxs_checkpoint, photos):
    results = classifier.classify(photos, top_k=7)
    assert all(isinstance(r, Result) and r.ok for r in results)
    assert [r.to_dict() for r in results] == cli_records(xxs_checkpoint.path, photos, "--top-k", "7")


def test_every_input_kind_gives_the_same_predictions(classifier, photos):
    path = photos[2]
    mixed = [str(path), path, path.read_bytes(), Image.open(path), np.asarray(Image.open(path).convert("RGB")),
             np.asarray(Image.open(path).convert("RGBA"))]
    results = classifier.classify(mixed)
    assert [r.path for r in results] == [str(path), str(path), "<bytes #2>", "<image #3>", "<array #4>",
                                         "<array #5>"]
    reference = results[0].predictions
    assert all(r.predictions == reference for r in results)


def test_predictions_are_the_plain_models_on_the_reference_tensor(classifier, xxs_checkpoint, photos):
    results = classifier.classify(photos, top_k=5)
    batch = torch.stack([reference(Image.open(p)) for p in photos])
    with torch.no_grad():
        expected = torch.softmax(xxs_checkpoint.model(batch).double(), dim=1).topk(5)
    for result, indices, values in zip(results, expected.indices, expected.values):
        assert [p.index for p in result.predictions] == indices.tolist()
        assert [p.probability for p in result.predictions] == pytest.approx(values.tolist(), abs=1e-5)


def test_bad_inputs_are_error_results_and_the_rest_is_classified(classifier, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    results = classifier.classify([photos[0], broken, b"", np.zeros((4, 4), dtype=np.float32), photos[1]])
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "not an image" in results[1].error and results[2].error == "empty file"
    assert "unsupported array" in results[3].error
    assert results[1].to_dict() == {"path": str(broken), "error": results[1].error}


def test_iter_classify_streams_from_an_endless_generator(classifier, photos):
    endless = itertools.cycle(photos)  # never ends: classify would not, iter_classify yields as batches finish
    first = list(itertools.islice(classifier.iter_classify(endless, batch_size=2), 7))
    assert [r.path for r in first] == [str(p) for p in itertools.islice(itertools.cycle(photos), 7)]


def test_a_single_image_must_be_wrapped_in_a_list(classifier, photos):
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        classifier.classify(str(photos[0]))


def test_embed_is_the_pooled_feature_vector(classifier, xxs_checkpoint, photos):
    features = classifier.embed(photos, batch_size=2)
    assert features.shape == (len(photos), 320) and features.dtype == np.float32
    batch = torch.stack([reference(Image.open(p)) for p in photos])
    with torch.no_grad():
        expected = xxs_checkpoint.model.forward_features(batch).mean(dim=(2, 3))
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-4, rtol=0)
    # The classifier applied to them gives the logits: they are what the head sees.
    with torch.no_grad():
        head = xxs_checkpoint.model.classifier(torch.from_numpy(features))
    np.testing.assert_allclose(head, classifier.logits(batch), atol=1e-3, rtol=0)


def test_embed_raises_on_an_unreadable_input_and_iter_embed_reports_it(classifier, photos):
    with pytest.raises(ImageDecodeError, match="<bytes #1>: empty file"):
        classifier.embed([photos[0], b""])
    (first, second), = list(classifier.iter_embed([photos[0], b""]))
    assert first.features.shape == (320,) and second.features is None and second.error == "empty file"


def test_preprocess_is_the_reference_transform(classifier, photos):
    for path in photos:
        assert torch.equal(classifier.preprocess(path), reference(Image.open(path)))


def test_logits_match_the_plain_model(classifier, xxs_checkpoint, photos):
    batch = torch.stack([classifier.preprocess(p) for p in photos])
    with torch.no_grad():
        expected = xxs_checkpoint.model(batch)
    assert (classifier.logits(batch) - expected).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="expected a batch"):
        classifier.logits(batch[0])


def test_info_is_what_mvit_info_prints(classifier):
    info = classifier.info()
    assert info["variant"] == "xxs" and info["source"] == "timm" and info["parameters"] == 1_272_024


def _classify_in_child(payload: bytes, paths: list[str]) -> list[dict]:
    classifier = pickle.loads(payload)
    assert not classifier.loaded  # nothing loaded until used
    return [r.to_dict() for r in classifier.classify(paths)]


def test_a_pickled_classifier_loads_lazily_in_another_process(classifier, photos):
    payload = pickle.dumps(classifier)
    assert len(payload) < 2_000  # how to load itself, not 5 MB of tensors
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        remote = pool.apply(_classify_in_child, (payload, [str(p) for p in photos]))
    assert remote == [r.to_dict() for r in classifier.classify(photos)]


@pytest.mark.slow
def test_the_api_inside_a_dask_cluster_gives_the_cli_records(classifier, xxs_checkpoint, photos):
    """A user's Dask job: the classifier is shipped to worker processes, each classifies a chunk."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        chunks = [[str(p) for p in photos[:3]], [str(p) for p in photos[3:]]]
        futures = client.map(lambda chunk, c=classifier: [r.to_dict() for r in c.classify(chunk)], chunks)
        remote = [record for chunk in client.gather(futures) for record in chunk]
        workers = {w for w in client.run(lambda: __import__("os").getpid()).values()}
    assert len(workers) == 2
    assert remote == cli_records(xxs_checkpoint.path, photos)


def test_load_errors_are_mvit_errors_with_a_message(tmp_path):
    from mvit_cli.errors import CheckpointError, WeightsUnavailableError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load(weights=bad)
    with pytest.raises(WeightsUnavailableError, match="offline"):
        load("xxs", offline=True)
    with pytest.raises(ValueError, match="top_k"):
        Classifier().classify([b""], top_k=0)
