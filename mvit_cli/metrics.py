"""Top-1 / top-5 accuracy as exact integer counts, per class, mergeable across processes.

Counts (not running averages) are kept so that shards evaluated by different processes add up exactly:
one all-reduce of one int64 tensor gives the same numbers as a single process would.

An image may have several correct classes (ImageNet-ReaL): it is a hit at k when any of its top k predictions is
one of them. It counts once in the totals, and once in the per-class row of each of its classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_K = 5


def top_k_probabilities(logits: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, classes) of the k most likely classes, most likely first, in torch.topk's order:
    [B, C] logits -> 2 x [B, k]. Softmax in float64: tiny probabilities stay exact enough for CSV."""
    return torch.softmax(logits.double(), dim=1).topk(k, dim=1)


@dataclass(frozen=True)
class ClassAccuracy:
    index: int
    images: int
    top1: int  # images of this class whose top-1 prediction is right
    top5: int  # images of this class whose true class is among the top 5


class Tally:
    """Per-class numbers of images, top-1 hits and top-5 hits, and the number of images that failed to decode."""

    def __init__(self, num_classes: int = 1000):
        self.per_class = torch.zeros(3, num_classes, dtype=torch.int64)  # rows: images, top-1 hits, top-5 hits
        self.totals = torch.zeros(3, dtype=torch.int64)  # the same over images: each image counts once
        self.failed = 0

    def add(self, targets: torch.Tensor, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Count a batch: targets [B] (one class each) or [B, L] (up to L correct classes each, padded with -1;
        at least one per image), predicted [B, k] (best first). Returns the top-1 and top-k hits, 2 x [B] bool."""
        targets = targets.to(torch.int64)
        if targets.dim() == 1:
            targets = targets[:, None]
        valid = targets >= 0
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every image needs at least one correct class")
        matches = (predicted[:, :, None] == targets[:, None, :]) & valid[:, None, :]  # [B, k, L]
        hit1 = matches[:, 0].any(dim=1)
        hit5 = matches.any(dim=(1, 2))
        image_of, _ = valid.nonzero(as_tuple=True)  # one entry per (image, correct class), row-major
        classes = targets[valid]
        update = torch.zeros_like(self.per_class)
        update[0].index_add_(0, classes, torch.ones_like(classes))
        update[1].index_add_(0, classes, hit1[image_of].to(torch.int64))
        update[2].index_add_(0, classes, hit5[image_of].to(torch.int64))
        self.per_class += update
        self.totals += torch.stack([torch.tensor(len(targets)), hit1.sum(), hit5.sum()]).to(torch.int64)
        return hit1, hit5

    @property
    def images(self) -> int:
        return int(self.totals[0])

    @property
    def top1(self) -> int:
        return int(self.totals[1])

    @property
    def top5(self) -> int:
        return int(self.totals[2])

    @property
    def top1_percent(self) -> float:
        return percent(self.top1, self.images)

    @property
    def top5_percent(self) -> float:
        return percent(self.top5, self.images)

    def classes(self) -> list[ClassAccuracy]:
        """Accuracy of every class that has at least one evaluated image, by class index."""
        images, top1, top5 = self.per_class.tolist()
        return [ClassAccuracy(i, n, top1[i], top5[i]) for i, n in enumerate(images) if n]

    def all_reduce(self, device: torch.device) -> None:
        """Sum the counts of every process in the default torch.distributed group (collective: all ranks call it)."""
        import torch.distributed as dist

        # One flat tensor, one collective; on the device because NCCL reduces only CUDA tensors.
        flat = torch.cat([self.per_class.flatten(), self.totals,
                          torch.tensor([self.failed], dtype=torch.int64)]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        cells = self.per_class.numel()
        self.per_class = flat[:cells].reshape(self.per_class.shape).clone()
        self.totals = flat[cells:cells + 3].clone()
        self.failed = int(flat[-1])


def percent(part: int, whole: int) -> float:
    """100 * part / whole, 0.0 for nothing evaluated (reported with the image count, so never misleading)."""
    return 100.0 * part / whole if whole else 0.0
