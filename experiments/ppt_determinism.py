"""PPT's prompt, bit for bit: the same stage trained on an idle CPU and beside a busy loop.

    .venv/bin/python experiments/ppt_determinism.py --profile default --steps 10 \
        --shards .metapt/artifacts/cluster/<key>/out/shards

Runs ``ppt_pretrain`` (the PPT stage's core function) on a stored cluster stage's shards (the
MLflow run of the cluster stage names its key) twice in this process, the second time beside a
busy process on the other core, and prints the sha256 of both prompts. Before the packed pass
expanded its prompt (``sequence_prompts``), the two differed from the second step on.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUSY = "import torch\ntorch.set_num_threads(1)\nx = torch.randn(256, 256)\nwhile True: x = torch.tanh(x @ x.T / 256)"


def main(argv: list[str] | None = None) -> int:
    from metapt_core.config import load_config
    from metapt_core.lm import load_prompt_model
    from metapt_core.ppt import ppt_pretrain
    from metapt_core.specs import PPTSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shards", required=True, help="a stored cluster stage's shards folder")
    args = parser.parse_args(argv)
    cfg = load_config(args.profile, overrides=[f"meta.meta_steps={args.steps}", "meta.val_every=0"])
    shards = Path(args.shards)
    if not (shards / "manifest.json").is_file():
        print(f"--shards {shards}: no manifest.json (a cluster stage's out/shards folder)")
        return 2
    model = load_prompt_model(cfg)
    spec = PPTSpec.of(cfg.with_pretrain_seed(0))
    digests = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("idle", "busy"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if arm == "busy" else None
            try:
                out = Path(tmp) / arm
                ppt_pretrain(shards, spec, model, out, resume=False)
                digest = hashlib.sha256((out / "prompt.safetensors").read_bytes()).hexdigest()
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            digests.append(digest)
            print(f"{arm}: {digest}")
    print("bit-identical" if digests[0] == digests[1] else "DIFFERENT")
    return 0 if digests[0] == digests[1] else 1


if __name__ == "__main__":
    sys.exit(main())
