"""Run a pre-training stage (MetaPT or PPT) on ``torchrun`` ranks of this machine.

    result = launch_pretrain(cfg, shards, out_dir, "maml", nproc=2, log=print)

The stage's whole configuration is written to a YAML file; ``torchrun --standalone`` starts
``nproc`` ranks of ``python -m metapt_core.meta --spec FILE``, each loads the backbone (its own
GPU under NCCL when there are enough, else the CPU under gloo) and takes ``tasks[rank::nproc]``
of every meta-batch (:mod:`metapt_core.pretraining.distributed`); rank 0 writes the prompt folder and
the result file. Checkpoints go to ``<out_dir>.ckpt`` as in one process, so a rank that dies
(a kill, an out-of-memory) ends the group, and the launcher relaunches it (``max_restarts``
times), which resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from metapt_core.config import PipelineConfig, dump_yaml
from metapt_core.errors import ConfigError
from metapt_core.pretraining.loop import PretrainResult
from metapt_core.store import ArtifactRef

# What the stage trains: a MetaPT algorithm ("maml", "fomaml", "reptile"), or a PPT control.
PPT_KINDS = ("ppt", "ppt_balanced")


_PROGRESS = re.compile(r"\[(\d+)/(\d+)\] (.*)$")


def progress_of(line: str) -> tuple[int, int, str] | None:
    """``(done, total, message)`` of a rank-0 progress line (``... [t/T] message``), else None."""
    found = _PROGRESS.search(line)
    return (int(found[1]), int(found[2]), found[3]) if found else None


def torchrun_command(
    nproc: int, spec_file: Path, shards: Path, out_dir: Path, kind: str, result_file: Path
) -> list[str]:
    """The ``torchrun`` command line (``python -m torch.distributed.run``, this interpreter).

    torchrun's own restarts are off (``--max_restarts=0``): a restarted gloo group can fail to
    reconnect on the old rendezvous, so a failed group is relaunched whole (a new rendezvous),
    which resumes from the checkpoint.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "--max_restarts=0",
        "-m", "metapt_core.meta", "--spec", str(spec_file), "--shards", str(shards),
        "--out", str(out_dir), "--result", str(result_file),
    ]  # fmt: skip
    if kind in PPT_KINDS:
        command.append("--ppt")
        if kind == "ppt_balanced":
            command.append("--balanced")
    else:
        command += ["--algorithm", kind]
    return command


def _run(
    command: list[str], env: dict[str, str], log: Callable[[str], None] | None
) -> tuple[int, list[str]]:
    """Run ``command``, passing each output line to ``log``; ``(exit code, last 40 lines)``."""
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:  # fmt: skip
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = (tail + [line])[-40:]
            if log is not None and line:
                log(line)
    return proc.returncode, tail


def launch_pretrain(
    cfg: PipelineConfig,
    shards: str | Path | ArtifactRef,
    out_dir: str | Path,
    kind: str,
    nproc: int | None = None,
    log: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Pre-train one prompt on ``nproc`` torchrun ranks (default ``cfg.distributed``).

    Args:
        cfg: the stage's whole configuration (``meta.seed`` already the pre-training seed).
        shards: the cluster stage's shards folder.
        out_dir: the prompt folder rank 0 writes.
        kind: ``maml``/``fomaml``/``reptile`` (MetaPT) or ``ppt``/``ppt_balanced``.
        nproc: ranks (at most ``meta.meta_batch_size``).
        log: called with every line the ranks print (progress, warnings), as it comes.

    Raises:
        ConfigError: ``nproc`` beyond the meta-batch.
        RuntimeError: every launch failed (with the error lines torchrun printed last).
    """
    ranks = cfg.distributed.nproc_per_node if nproc is None else nproc
    if ranks > cfg.meta.meta_batch_size:
        raise ConfigError(
            "distributed.nproc_per_node", ranks,
            f"must be at most meta.meta_batch_size ({cfg.meta.meta_batch_size})",
        )  # fmt: skip
    root = shards.path if isinstance(shards, ArtifactRef) else shards
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metapt-launch-") as tmp:
        spec_file, result_file = Path(tmp) / "config.yaml", Path(tmp) / "result.json"
        spec_file.write_text(dump_yaml(cfg), "utf-8")
        command = torchrun_command(ranks, spec_file, Path(root), out, kind, result_file)
        env = dict(os.environ)
        # ranks share the cores: each gets its share of threads (torchrun's default is 1)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
        if Path("/sys/class/net/lo").exists():
            # one node: the ranks' own traffic stays on the loopback interface
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            env.setdefault("NCCL_SOCKET_IFNAME", "lo")
        attempts = 1 + cfg.distributed.max_restarts
        for attempt in range(1, attempts + 1):
            code, tail = _run(command, env, log)
            if code == 0 and result_file.is_file():
                break
            if attempt < attempts and log is not None:
                log(f"torchrun exited with {code}: relaunching ({attempt + 1} of {attempts}), "
                    "resuming from the last checkpoint")  # fmt: skip
        else:
            raise RuntimeError(
                f"torchrun ({ranks} ranks, {kind}) failed {attempts} times, last exit {code}: "
                + " | ".join(t.strip() for t in tail if "Error" in t or "error" in t)[-600:]
            )
        data = json.loads(result_file.read_text("utf-8"))
    ref = data["ref"]
    # what rank 0 reported (its history is in the prompt folder's history.json)
    return PretrainResult(ref=ArtifactRef(ref["path"], ref["sha256"]), metrics=data["metrics"])
