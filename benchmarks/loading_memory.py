"""Peak memory of loading a published-size BiGR checkpoint: minibigr's lean loader against a plain load.

    python benchmarks/loading_memory.py                    # BiGR-XL size (799M parameters, a 3.2 GB file)
    python benchmarks/loading_memory.py --preset BiGR-L    # or another published size

Writes a synthetic checkpoint of the chosen size (random weights, the authors' layout: {"ema": state dict}
with the denoiser's duplicate and the schedule buffers) into a temporary directory, then loads it in fresh
processes, each reporting its peak resident memory (VmHWM of /proc/self/status, which counts the file's
mapped pages too) after loading and after one forward pass (which reads every weight):

    plain   torch.load(weights_only=True) of the whole file, a BiGR built with random initial weights, then
            load_state_dict copying the file's tensors in (the way the authors' code loads)
    lean    minibigr.official.load_bigr: the model is built on the meta device and takes the file's tensors,
            memory-mapped (torch.load(mmap=True) + load_state_dict(assign=True))
    lean bf16   the same with dtype=torch.bfloat16: only a half-size copy is materialised
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, re, sys, time, torch
from minibigr import BiGR, BiGRConfig, official
torch.set_num_threads(1)
mode, path, preset = sys.argv[1], sys.argv[2], sys.argv[3]
def peak():   # GiB; VmHWM, unlike ru_maxrss, does not carry over the parent's peak into this process
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 2**20
t0 = time.perf_counter()
if mode == "plain":
    state = torch.load(path, map_location="cpu", weights_only=True)["ema"]
    model = BiGR(BiGRConfig.preset(preset)).eval()
    model.load_state_dict(official._from_official_bigr(state))
    del state
else:
    model = official.load_bigr(path, dtype=torch.bfloat16 if mode == "lean-bf16" else None)
seconds, loaded = time.perf_counter() - t0, peak()
c = model.config
with torch.no_grad():
    model(torch.zeros(1, c.num_tokens, c.K, dtype=model.backbone.tok_embeddings.weight.dtype), torch.tensor([0]))
print(json.dumps({"mode": mode, "seconds": seconds, "peak_after_load_gib": loaded, "peak_after_forward_gib": peak()}))
"""


WRITER = r"""
import sys, torch
from minibigr import BiGR, BiGRConfig, official
torch.save({"ema": official.to_official_bigr(BiGR(BiGRConfig.preset(sys.argv[2])))}, sys.argv[1])
"""


def write_checkpoint(path: Path, preset: str) -> float:
    """A {"ema": official state dict} of random weights of the preset's size, written by a process of its own
    (this one stays small); returns its size in GiB."""
    subprocess.run([sys.executable, "-c", WRITER, str(path), preset], check=True)
    return path.stat().st_size / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="BiGR-XL", help="a published size: BiGR-L, BiGR-XL or BiGR-XXL")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="minibigr-loading-") as tmp:
        path = Path(tmp) / "bigr.pt"
        t0 = time.perf_counter()
        size = write_checkpoint(path, args.preset)
        print(f"{args.preset}: a {size:.2f} GiB checkpoint written in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for mode in ("plain", "lean", "lean-bf16"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), args.preset], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\n| loading ({args.preset}, {size:.2f} GiB file) | seconds | peak after loading | peak after a forward "
          f"pass | x file size |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['peak_after_load_gib']:.2f} GiB | "
              f"{r['peak_after_forward_gib']:.2f} GiB | {r['peak_after_forward_gib'] / size:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "file_gib": size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
