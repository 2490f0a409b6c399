"""Our MobileViT computes what the reference implementations compute, for every published checkpoint format.

For each variant, the references (timm, transformers) get random values in EVERY parameter and buffer, are
saved in the hub file formats (timm model.safetensors / pytorch_model.bin, transformers pytorch_model.bin /
model.safetensors, ml-cvnets .pt), loaded back with our loader, and both models classify the same batch of
images at 256, 224 (7x7 last stage: the resize-to-patch-multiple path) and 320.

Agreement criterion: max |ours - reference| <= 2 x max |reference float32 - reference float64| on the same
input, i.e. we differ from the reference by no more than float32 rounding does. Run with `-s` to see the
measured table.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from mvit_cli.random_weights import randomize_, structured_images  # noqa: E402
from reference_models import (  # noqa: E402
    PUBLISHED_PARAMETERS,
    build_timm,
    build_transformers,
    plain_state_dict,
    timm_logits,
    to_cvnets_state_dict,
    transformers_logits,
)

from mvit_cli.checkpoints import load_checkpoint  # noqa: E402
from mvit_cli.model import build_model, count_parameters  # noqa: E402

VARIANTS = ("xxs", "xs", "s")
# 256 (the published size) in the fast lane; the other sizes (the resize paths of the blocks) in the full suite.
RESOLUTIONS = (256, pytest.param(224, marks=pytest.mark.slow), pytest.param(320, marks=pytest.mark.slow))
BATCH = 3
# A floor for the tolerance, for the case where the reference's own float32-vs-float64 difference happened to
# be pathologically tiny: two float32 computations of a value cannot be asked to agree better than a few units
# in the last place of the largest logit (1 ulp = 2^-23 ~ 1.2e-7 relative). Measured here the fp32-vs-fp64
# difference is 2e-6 .. 6e-6 for logits up to ~5, i.e. 3 to 10 ulps, so the floor (4 ulps) does not decide.
FLOOR_ULPS = 4
FLOAT32_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class HubFile:
    label: str
    reference: str  # "timm" or "transformers": whose model the file's weights come from and is compared to
    format: str  # what our loader must detect
    filename: str
    writer: str  # "safetensors" or "torch"


HUB_FILES = (
    HubFile("timm-safetensors", "timm", "timm", "model.safetensors", "safetensors"),
    HubFile("timm-bin", "timm", "timm", "pytorch_model.bin", "torch"),
    HubFile("transformers-bin", "transformers", "transformers", "pytorch_model.bin", "torch"),
    HubFile("transformers-safetensors", "transformers", "transformers", "model.safetensors", "safetensors"),
    # ml-cvnets cannot be installed here; its weights are the transformers model's, under cvnets' key names
    HubFile("cvnets-pt", "transformers", "cvnets", "mobilevit.pt", "torch"),
)
LOGITS = {"timm": timm_logits, "transformers": transformers_logits}
BUILDERS = {"timm": build_timm, "transformers": build_transformers}
SEEDS = {"timm": 11, "transformers": 23}

MEASURED: list[tuple[str, str, int, float, float, float, float]] = []


class References:
    """Randomised reference models of one variant, their hub files, and cached logits."""

    def __init__(self, variant: str, directory: Path):
        self.variant = variant
        self.directory = directory
        self.models = {kind: randomize_(BUILDERS[kind](variant), seed=SEEDS[kind]).eval() for kind in BUILDERS}
        self.models64 = {kind: copy.deepcopy(m).double() for kind, m in self.models.items()}
        self._logits: dict[tuple, torch.Tensor] = {}
        self._ours: dict[str, torch.nn.Module] = {}
        self._write_files()

    def _write_files(self) -> None:
        from safetensors.torch import save_file

        for hub_file in HUB_FILES:
            state = plain_state_dict(self.models[hub_file.reference])
            if hub_file.format == "cvnets":
                state = to_cvnets_state_dict(state)
            path = self.path(hub_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            if hub_file.writer == "safetensors":
                save_file(state, str(path), metadata={"format": "pt"})  # what hub uploads carry
            else:
                torch.save(state, path)

    def path(self, hub_file: HubFile) -> Path:
        return self.directory / self.variant / hub_file.label / hub_file.filename

    @torch.no_grad()
    def reference(self, kind: str, resolution: int, dtype: torch.dtype) -> torch.Tensor:
        key = (kind, resolution, dtype)
        if key not in self._logits:
            model = self.models[kind] if dtype == torch.float32 else self.models64[kind]
            self._logits[key] = LOGITS[kind](model, images(resolution).to(dtype)).double()
        return self._logits[key]

    def ours(self, hub_file: HubFile) -> torch.nn.Module:
        """Our model loaded from `hub_file`, shared between files that load to bit-identical weights.

        The files of one reference (e.g. timm's .safetensors and .bin) hold the same weights, so once one of
        them loaded into a model, the others must load to exactly the same tensors; then their logits are
        the same too, and the (slow) forward passes are run once per reference, not once per file.
        """
        checkpoint = load_checkpoint(self.path(hub_file))  # variant inferred from the shapes
        assert (checkpoint.format, checkpoint.variant) == (hub_file.format, self.variant)
        first = self._ours.setdefault(hub_file.reference, checkpoint.model)
        if first is not checkpoint.model:
            ours, theirs = checkpoint.model.state_dict(), first.state_dict()
            assert ours.keys() == theirs.keys()
            differing = [k for k in ours if not torch.equal(ours[k], theirs[k])]
            assert not differing, f"{hub_file.label} loads other weights than its sibling files: {differing[:5]}"
        return first

    @torch.no_grad()
    def our_logits(self, hub_file: HubFile, resolution: int) -> torch.Tensor:
        model = self.ours(hub_file)
        key = ("ours", hub_file.reference, resolution)
        if key not in self._logits:
            self._logits[key] = model(images(resolution)).double()
        return self._logits[key]


def images(resolution: int) -> torch.Tensor:
    return structured_images(BATCH, resolution, seed=resolution)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    # One intra-op thread: these are many small CPU ops, and on a busy runner (other test processes on the
    # same 2 cores) OpenMP's spin-waiting made this module 4-8x slower with 2 threads; with 1 it takes ~30 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache: dict[str, References] = {}
    directory = tmp_path_factory.mktemp("hub")

    def get(variant: str) -> References:
        if variant not in cache:
            cache[variant] = References(variant, directory)
        return cache[variant]

    yield get
    torch.set_num_threads(threads)
    if MEASURED:
        print("\n\nparity: max |ours - ref| vs the reference's own max |fp32 - fp64|, logits std")
        print(f"{'variant':8} {'file':26} {'res':>4} {'ours-ref':>10} {'fp32-fp64':>10} {'floor':>10} {'std':>6}")
        for variant, label, res, diff, own, floor, std in MEASURED:
            print(f"{variant:8} {label:26} {res:4d} {diff:10.2e} {own:10.2e} {floor:10.2e} {std:6.2f}")


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("hub_file", HUB_FILES, ids=lambda f: f.label)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_reference(references, variant: str, hub_file: HubFile, resolution: int):
    refs = references(variant)
    reference32 = refs.reference(hub_file.reference, resolution, torch.float32)
    reference64 = refs.reference(hub_file.reference, resolution, torch.float64)
    ours = refs.our_logits(hub_file, resolution)

    own_rounding = (reference32 - reference64).abs().max().item()
    diff = (ours - reference32).abs().max().item()
    spread = reference64.std().item()
    floor = FLOOR_ULPS * FLOAT32_EPS * reference64.abs().max().item()
    MEASURED.append((variant, hub_file.label, resolution, diff, own_rounding, floor, spread))

    assert spread > 0.1, "degenerate test: the logits barely depend on the weights"
    assert not torch.allclose(reference64[0], reference64[1]), "degenerate test: images give equal logits"
    tolerance = max(2 * own_rounding, floor)
    assert diff <= tolerance, (
        f"{variant} {hub_file.label} @{resolution}: max |ours - ref| = {diff:.3g} exceeds twice the reference's "
        f"own fp32-vs-fp64 difference ({own_rounding:.3g})"
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_equal_the_references(variant: str):
    counts = {kind: count_parameters(build(variant)) for kind, build in BUILDERS.items()}
    assert counts["timm"] == counts["transformers"] == PUBLISHED_PARAMETERS[variant]
    assert count_parameters(build_model(variant)) == counts["timm"]


@pytest.mark.parametrize("kind", ["ours", *BUILDERS])
def test_randomize_reaches_every_tensor(kind: str):
    """randomize_ must leave no parameter or buffer at its default (a default 0/1 hides mapping mistakes)."""
    build = build_model if kind == "ours" else BUILDERS[kind]
    torch.manual_seed(0)
    model = build("xxs")
    default = copy.deepcopy(model.state_dict())
    randomize_(model, seed=3)
    untouched = []
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        constant = value.numel() > 1 and bool((value == value.flatten()[0]).all())
        if torch.equal(value, default[key]) or constant:
            untouched.append(key)
    assert not untouched, f"randomize_ left {len(untouched)} tensors at a default or constant: {untouched[:5]}"


def test_randomize_does_not_depend_on_the_global_rng():
    """Regression: BatchNorm calibration ran with transformers' dropout active, so weights changed per run."""
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        states.append(randomize_(build_transformers("xxs"), seed=4).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
