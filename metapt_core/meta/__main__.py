"""Meta-pretrain a prompt from a shards folder, on one process or several with ``torchrun``.

    python -m metapt_core.meta --profile smoke --shards SHARDS_DIR --out OUT_DIR --algorithm maml
    torchrun --nproc_per_node 2 -m metapt_core.meta --profile smoke --shards SHARDS_DIR --out OUT_DIR
    python -m metapt_core.meta --profile smoke --shards SHARDS_DIR --out OUT_DIR --ppt [--balanced]
    torchrun ... -m metapt_core.meta --spec CONFIG.yaml ...   # a whole resolved config (the pipeline)

Tasks of each meta-batch are split across ranks; rank 0 writes the prompt folder (and, with
``--result``, a JSON file with its reference and metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from metapt_core.config import MetaAlgorithm, PipelineConfig, from_dict, load_config, read_yaml
from metapt_core.pretraining.distributed import init_from_env, is_main_process
from metapt_core.store import atomic_write_json

log = logging.getLogger("metapt_core.meta")


def _progress(done: int, total: int, message: str) -> None:
    if is_main_process():
        log.info("[%d/%d] %s", done, total, message)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the backbone, run meta-pretraining (or PPT), print the metrics."""
    parser = argparse.ArgumentParser(
        prog="python -m metapt_core.meta", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="default")
    parser.add_argument("--config", default=None, help="a YAML file merged over the profile")
    parser.add_argument("--spec", default=None, help="a whole resolved config (no profile)")
    parser.add_argument("--set", action="append", default=[], help="section.key=value")
    parser.add_argument("--shards", required=True, help="the cluster stage's shards folder")
    parser.add_argument("--out", required=True, help="the prompt folder to write")
    parser.add_argument("--result", default=None, help="rank 0 writes ref and metrics here")
    parser.add_argument("--algorithm", default="maml", choices=[a.value for a in MetaAlgorithm])
    parser.add_argument("--ppt", action="store_true", help="train the PPT baseline instead")
    parser.add_argument("--balanced", action="store_true", help="PPT on MetaPT's episode rows")
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    # Rank 0 tells the story; the other ranks speak only of warnings and errors.
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")  # fmt: skip

    init_from_env()
    cfg: PipelineConfig = (
        from_dict(PipelineConfig, read_yaml(args.spec))
        if args.spec
        else load_config(args.profile, args.config, args.set)
    )
    from metapt_core.lm import load_prompt_model

    model = load_prompt_model(cfg)
    if args.ppt:
        from metapt_core.ppt import ppt_pretrain
        from metapt_core.specs import PPTSpec

        result = ppt_pretrain(Path(args.shards), PPTSpec.of(cfg), model, Path(args.out),
                              progress=_progress, resume=not args.no_resume,
                              balanced=args.balanced)  # fmt: skip
    else:
        from metapt_core.meta.trainer import meta_pretrain
        from metapt_core.specs import MetaSpec

        result = meta_pretrain(Path(args.shards), MetaSpec.of(cfg), MetaAlgorithm(args.algorithm),
                               model, Path(args.out), progress=_progress,
                               resume=not args.no_resume)  # fmt: skip
    if is_main_process():
        report = {"ref": result.ref.to_dict(), "metrics": result.metrics}
        if args.result:
            atomic_write_json(args.result, report)
        print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
