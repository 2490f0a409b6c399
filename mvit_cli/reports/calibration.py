"""How far a classifier's confidence is from its accuracy: reliability bins and the expected calibration error.

Definitions (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv 1706.04599, section 2):
an image's confidence is its top-1 probability (the softmax over the classes scored: all 1000, or a set's 200
for ImageNet-R / -A) and it is correct when its top-1 prediction is correct as `eval` counts it (for ReaL: one
of the image's labels). Confidences fall into `BINS` equal-width bins; bin b holds confidences in
[b / BINS, (b + 1) / BINS), the last one also 1.0. Then

    ECE = sum over bins of (images in the bin / all images) * |accuracy of the bin - mean confidence of the bin|

15 bins, as in Guo et al.'s experiments (and most papers since, so the figure compares). Counts and sums only:
bins of several processes or batches add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float  # confidences in [lower, upper); the last bin also holds 1.0
    upper: float
    images: int
    correct: int
    confidence_sum: float

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None

    @property
    def confidence(self) -> float | None:
        """Mean confidence of the bin's images."""
        return self.confidence_sum / self.images if self.images else None


class Calibration:
    """Reliability bins filled image by image."""

    def __init__(self, bins: int = BINS):
        if bins < 1:
            raise ValueError(f"bins must be at least 1, not {bins}")
        self.size = bins
        self.images = [0] * bins
        self.correct = [0] * bins
        self.confidence_sums = [0.0] * bins

    def bin_of(self, confidence: float) -> int:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"a confidence is a probability, not {confidence}")
        return min(int(confidence * self.size), self.size - 1)

    def add(self, confidence: float, correct: bool) -> None:
        b = self.bin_of(confidence)
        self.images[b] += 1
        self.correct[b] += bool(correct)
        self.confidence_sums[b] += confidence

    @property
    def total(self) -> int:
        return sum(self.images)

    def bins(self) -> list[ReliabilityBin]:
        return [ReliabilityBin(b / self.size, (b + 1) / self.size, self.images[b], self.correct[b],
                               self.confidence_sums[b]) for b in range(self.size)]

    @property
    def ece(self) -> float | None:
        """The expected calibration error as a fraction (module docstring); None before any image."""
        total = self.total
        if not total:
            return None
        return sum(b.images / total * abs(b.accuracy - b.confidence) for b in self.bins() if b.images)
