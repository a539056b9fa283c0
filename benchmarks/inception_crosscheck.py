"""Cross-check minibigr's FID Inception-v3 port against pytorch-fid's network, without the real weights.

The literature's FID numbers come from pytorch-fid's Inception (TensorFlow's 2015-12-05 graph). The
weights file cannot be downloaded here, so this check builds pytorch-fid's network with *random*
weights (its download is intercepted and answered with a randomised state dict in the file's format),
writes that state dict to a file, loads the file with `minibigr.inception.InceptionFeatures`, and
compares the two networks on the same images. Any difference in architecture, padding, pooling,
input scaling or parameter names shows up as a mismatch or a loading error.

    pip install pytorch-fid torchvision --no-deps      # dev-only; not needed by minibigr
    python benchmarks/inception_crosscheck.py

The logits compared are the Inception Score's: pool @ fc.weight^T, without the fc bias (minibigr's convention, the
original IS code's). tests/test_evaluate.py imports this script and runs its own half without pytorch-fid.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # `python benchmarks/inception_crosscheck.py`

from minibigr.inception import InceptionFeatures, InceptionV3  # noqa: E402


def import_pytorch_fid():
    """pytorch_fid.inception. Only torchvision's Python model code is needed, so its compiled-op
    registrations are skipped: a PyPI torchvision wheel built for CUDA fails them on a CPU torch."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        from pytorch_fid import inception
    except ImportError as e:
        raise SystemExit(f"this check needs pytorch-fid and torchvision: pip install pytorch-fid torchvision "
                         f"({e})") from None
    return inception


def randomised(state: dict, generator: torch.Generator) -> dict:
    """A state dict of the same shapes with He-scaled weights and plausible BatchNorm statistics
    (positive variances), so every layer's arithmetic matters in the comparison."""
    out = {}
    for key, v in state.items():
        if key.endswith("num_batches_tracked"):
            continue    # the pt_inception file has none
        if key.endswith("running_var"):
            out[key] = torch.rand(v.shape, generator=generator) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            out[key] = 0.1 * torch.randn(v.shape, generator=generator)
        elif v.dim() > 1:
            out[key] = torch.randn(v.shape, generator=generator) * (2.0 / v[0].numel()) ** 0.5
        else:
            out[key] = 1.0 + 0.1 * torch.randn(v.shape, generator=generator)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=32, help="input resolution (resized to 299 by both)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fid = import_pytorch_fid()
    g = torch.Generator().manual_seed(args.seed)
    # Random weights with *our* names and shapes; pytorch-fid loads them strictly, so a naming or
    # shape difference already fails here.
    state = randomised(InceptionV3().state_dict(), g)
    fid.load_state_dict_from_url = lambda url, progress=True: state
    theirs = fid.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        torch.save(state, weights)
        ours = InceptionFeatures(weights)
    x = torch.rand(args.images, 3, args.size, args.size, generator=g)
    with torch.no_grad():
        pool_theirs = theirs(x)[0].flatten(1)
        pool_ours, logits_ours = ours(x)
    logits_theirs = pool_theirs @ state["fc.weight"].T
    d_pool = (pool_theirs - pool_ours).abs().max().item()
    d_logits = (logits_theirs - logits_ours).abs().max().item()
    print(f"pool features: max |diff| {d_pool:.3g} (scale {pool_theirs.abs().max().item():.3g})")
    print(f"logits:        max |diff| {d_logits:.3g} (scale {logits_theirs.abs().max().item():.3g})")
    ok = d_pool <= 1e-4 * max(1.0, pool_theirs.abs().max().item()) and \
        d_logits <= 1e-4 * max(1.0, logits_theirs.abs().max().item())
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
