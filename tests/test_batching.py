"""Parallel decoding into batches: input order, every input exactly once, failures never stop the stream;
and the hand-over of batches to the model."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from image_corpus import encode, smooth_rgb

from mvit_cli.pipeline import batching
from mvit_cli.pipeline.batching import batch_spans, iter_batches, num_batches, run_batches
from mvit_cli.pipeline.images import decode_image
from mvit_cli.preprocess import Preprocessing, preprocess

P = Preprocessing(284, "bicubic", 256)


@pytest.fixture(scope="module")
def sources():
    good = [encode(smooth_rgb(40 + 7 * i, 30 + 5 * i, seed=i), "PNG") for i in range(6)]
    # positions: 0 ok, 1 bad, 2 ok, 3 ok, 4 bad, 5 bad, 6 bad, 7 ok, 8 ok, 9 ok
    return [good[0], b"", good[1], good[2], b"junk", b"", b"\xff\xd8\xff", good[3], good[4], good[5]]


def collect(sources, batch_size, workers):
    return list(iter_batches(sources, P, batch_size, workers))


@pytest.mark.parametrize("workers", [0, 2])
def test_order_coverage_and_failures(sources, workers):
    batches = collect(sources, 3, workers)
    assert len(batches) == 4
    seen = []
    for number, batch in enumerate(batches):
        positions = sorted(batch.indices + [position for position, _ in batch.failures])
        assert positions == list(range(3 * number, min(3 * number + 3, len(sources))))  # one chunk per batch
        assert batch.indices == sorted(batch.indices)
        assert batch.images.shape == (len(batch.indices), 3, 256, 256) and batch.images.dtype == torch.float32
        seen += positions
    assert seen == list(range(len(sources)))
    failures = dict(f for batch in batches for f in batch.failures)
    assert sorted(failures) == [1, 4, 5, 6]
    assert failures[1] == failures[5] == "empty file"
    assert "not an image" in failures[4]
    # positions 3..5 -> one good image; a batch of nothing but failures still comes out, empty
    only_failures = list(iter_batches([b"", b"x"], P, 4, workers))
    assert len(only_failures) == 1 and only_failures[0].images.shape == (0, 3, 256, 256)
    assert [p for p, _ in only_failures[0].failures] == [0, 1]


def test_pixels_are_the_preprocessed_images_whatever_the_workers(sources):
    inline, parallel = collect(sources, 4, 0), collect(sources, 4, 2)
    for a, b in zip(inline, parallel):
        assert a.indices == b.indices and torch.equal(a.images, b.images)
    for batch in inline:
        for row, position in enumerate(batch.indices):
            assert torch.equal(batch.images[row], preprocess(decode_image(sources[position]), P))


def test_first_batches_grow_to_the_batch_size_and_cover_every_input_once():
    assert [len(span) for span in batch_spans(100, 32)] == [4, 8, 16, 32, 32, 8]
    assert [len(span) for span in batch_spans(10, 3)] == [3, 3, 3, 1]
    assert [len(span) for span in batch_spans(3, 1)] == [1, 1, 1]
    assert list(batch_spans(0, 8)) == []
    for count, size in ((100, 32), (7, 5), (1000, 64), (5, 4)):
        positions = [p for span in batch_spans(count, size) for p in span]
        assert positions == list(range(count))
        assert num_batches(count, size) == len(list(batch_spans(count, size)))


def test_batches_follow_the_spans(sources):
    batches = collect(sources, 8, 2)
    spans = list(batch_spans(len(sources), 8))
    assert [sorted(b.indices + [p for p, _ in b.failures]) for b in batches] == [list(s) for s in spans]


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mvit-decode")]


def test_decoding_stays_a_bounded_distance_ahead_and_stops_when_the_reader_stops(monkeypatch):
    decoded = []
    real_decode = batching.decode_image

    def counting_decode(source, *args):  # a spy: the real decoder, counted
        decoded.append(source)
        return real_decode(source, *args)

    monkeypatch.setattr(batching, "decode_image", counting_decode)
    image = encode(smooth_rgb(48, 40, seed=1), "PNG")
    batches = iter_batches([image] * 500, P, 16, workers=2)
    first = next(batches)
    assert len(first.indices) == batching.FIRST_BATCH
    time.sleep(0.5)  # time enough to decode everything, were the decoders not held back
    spans = list(batch_spans(500, 16))
    ahead = sum(len(span) for span in spans[: 1 + batching.PREFETCH_BATCHES])
    assert len(first.indices) < len(decoded) <= ahead
    batches.close()
    stopped_at = len(decoded)
    assert decoder_threads() == []
    time.sleep(0.2)
    assert len(decoded) == stopped_at


class RecordingRunner:
    """A runner with `submit`, logging when batches go in and when their results are taken."""

    def __init__(self):
        self.events = []

    def __call__(self, images):
        return images.flatten(1).sum(1, keepdim=True)

    def submit(self, images):
        number = len([e for e in self.events if e[0] == "submit"])
        self.events.append(("submit", number))
        runner = self

        class Pending:
            def result(self):
                runner.events.append(("result", number))
                return runner(images)

            def cancel(self):
                runner.events.append(("cancel", number))

        return Pending()


def test_the_model_gets_the_next_batch_before_the_caller_gets_this_one(sources):
    runner = RecordingRunner()
    batches = collect(sources, 3, 0)
    out = []
    for batch, logits in run_batches(batches, runner):
        runner.events.append(("caller", len(out)))
        out.append((batch, logits))
    # batches 0, 2 and 3 have images; batch 1 (positions 3..5) has one image too; none is failures only here
    assert [b for b, _ in out] == batches
    for batch, logits in out:
        assert torch.equal(logits, runner(batch.images))
    events = runner.events
    for number in range(len(batches) - 1):  # batch n+1 was submitted before batch n reached the caller
        assert events.index(("submit", number + 1)) < events.index(("caller", number))
    assert events[-1] == ("caller", len(batches) - 1)


def test_a_batch_of_failures_only_gets_no_logits_and_plain_callables_work_too():
    batches = list(iter_batches([b"", b"x", encode(smooth_rgb(40, 40, seed=2), "PNG")], P, 2, 0))
    assert batches[0].indices == []
    calls = []

    def plain(images):
        calls.append(images.shape[0])
        return images.flatten(1).sum(1, keepdim=True)

    for run in (plain, RecordingRunner()):
        results = list(run_batches(batches, run))
        assert results[0][1] is None and results[1][1].shape == (1, 1)
    assert calls == [1]  # the plain callable was never asked to run an empty batch


def test_a_reader_that_stops_early_cancels_the_batch_still_queued(sources):
    runner = RecordingRunner()
    stream = run_batches(collect(sources, 3, 0), runner)
    next(stream)
    stream.close()
    assert runner.events[-1] == ("cancel", 1)


def test_an_interrupt_while_waiting_for_a_batch_cancels_that_batch_too(sources):
    # Regression: Ctrl-C arrives while the caller waits for batch n's logits; batch n+1 was cancelled but the
    # rest of batch n kept running, and the process waited for those chunks before it could exit.
    class Interrupted(Exception):
        pass

    class InterruptedRunner(RecordingRunner):
        def submit(self, images):
            pending = super().submit(images)
            number = len([e for e in self.events if e[0] == "submit"]) - 1
            if number == 1:
                def interrupted():
                    self.events.append(("result", number))
                    raise Interrupted
                pending.result = interrupted
            return pending

    runner = InterruptedRunner()
    stream = run_batches(collect(sources, 3, 0), runner)
    next(stream)
    with pytest.raises(Interrupted):
        next(stream)
    assert {("cancel", 1), ("cancel", 2)} <= set(runner.events)
