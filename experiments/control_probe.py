"""How far one inner step can adapt a prompt on the positive control's held-out tasks.

    .venv/bin/python experiments/control_probe.py --shards <control cluster out/shards> \
        --prompt ppt=<ppt out> --prompt metapt_maml=<meta-pretrain out> [--alphas 0.1 1 3]

For each prompt (and the profile's initial prompt) and each inner rate alpha, prints the mean
query loss over the check's held-out-cluster episodes before and after ``inner_steps`` SGD
steps on the support, with and without the trust region. A meta-learned initialisation can
only beat PPT on the control if some rule in this table moves the loss well below PPT's
before-loss; the table says which step sizes can.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def preconditioned(prompt, episodes, model, alpha, ratio):  # type: ignore[no-untyped-def]
    """One diagonal-preconditioned step per episode; returns ``(before, after)`` ``[E]``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from metapt_core.meta.maml import step_size

    grads = []
    for episode in episodes:
        theta = prompt.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(theta, episode.support), theta)
        grads.append(g.float())
    scale = torch.stack(grads).pow(2).mean(0).sqrt() + 1e-8
    before, after = [], []
    for episode, g in zip(episodes, grads, strict=True):
        step = (g / scale).to(prompt.dtype)
        adapted = prompt - step_size(step, prompt, alpha, ratio) * step
        for theta, out in ((prompt, before), (adapted, after)):
            with torch.no_grad():
                scores = model.class_scores(theta.detach(), episode.query).float()
            out.append(float(F.cross_entropy(scores, episode.query.labels.to(scores.device))))
    return np.asarray(before), np.asarray(after)


def main(argv: list[str] | None = None) -> int:
    from metapt_core.config import load_config
    from metapt_core.lm import load_prompt_model
    from metapt_core.pretraining.objective import check_set, episode_losses
    from metapt_core.pretraining.start import starting_prompt
    from metapt_core.prompt import load_prompt
    from metapt_core.specs import EpisodeSettings, MetaSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="control")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--prompt", action="append", default=[], help="name=folder")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument(
        "--precondition",
        action="store_true",
        help="diagonal step: g / (sqrt(mean_e g_e^2) + eps), the mean over the episodes' supports",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.profile, overrides=args.set)
    model = load_prompt_model(cfg)
    spec = MetaSpec.of(cfg.with_pretrain_seed(0))
    episodes = check_set(
        Path(args.shards), EpisodeSettings.of(spec.meta), spec.pool, model, args.episodes
    )
    initial = starting_prompt(model, spec, None)
    prompts = {"initial": initial}
    for item in args.prompt:
        name, folder = item.split("=", 1)
        prompts[name] = load_prompt(folder)[0].to(initial.device, initial.dtype)
    print(f"{len(episodes)} episodes, {args.steps} inner step(s)")
    for name, prompt in prompts.items():
        for ratio in args.ratios:
            for alpha in args.alphas:
                start = time.perf_counter()
                if args.precondition:
                    before, after = preconditioned(prompt, episodes, model, alpha, ratio)
                else:
                    before, after = episode_losses(
                        prompt, episodes, model, alpha, args.steps, ratio
                    )
                print(
                    f"{name:14s} ratio {ratio:4.2f} alpha {alpha:6.2f}: before {before.mean():.3f}"
                    f" after {after.mean():.3f} gain {before.mean() - after.mean():+.3f}"
                    f" ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
