"""A minimal stand-in for torchvision, so that the test-only reference `timm` imports beside a CPU torch.

Why: timm imports torchvision at import time (data transforms, dataset factory, FrozenBatchNorm2d), but
only its data pipeline ever *uses* it; building a model with `timm.create_model('mobilevit_s')` never does.
PyPI's torchvision wheels are pinned to one torch build each and would replace the local CPU torch with a
multi-GB CUDA one, so the tests put this directory on `sys.path` (only inside the tests that need timm,
see tests/reference_models.py) and install timm with `pip install --no-deps timm`.

What it provides: the module paths timm imports from, where every name resolves to a placeholder class
that raises if it is ever instantiated or called (so an accidental use fails loudly instead of silently
doing nothing), plus the real `InterpolationMode` enum values timm reads at import time.
`torchvision.models` is deliberately absent, so timm's optional FX feature extraction reports itself as
unavailable instead of pretending to work.
"""

__version__ = "0.0.0+mvit.stub"

from torchvision._placeholder import placeholder_getattr as __getattr__  # noqa: E402,F401
