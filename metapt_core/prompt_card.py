"""A learned prompt as a product: a peft adapter folder with a model card.

:func:`export_prompt` turns a pre-training stage's prompt folder (``prompt.safetensors``,
``prompt.json``, ``history.json``, ``peft/``) into a folder that both

- ``PeftModel.from_pretrained(base_model, folder)`` loads (``adapter_config.json`` written by
  peft's own ``PromptTuningConfig``, ``adapter_model.safetensors``), and
- ``prompt.init: file`` with ``prompt.init_file: folder`` starts from (the adapter's weights and
  ``prompt.json``),

with a ``README.md`` model card: the backbone (its portable name and the digest of the weights
it was trained against), how the prompt was made (algorithm, settings, pre-training seed, held-out
clusters, calibrated alpha, the clustering and the pool it read), its validation history and, when
given, the meta-objective check of its pre-training seed and the evaluation table of this prompt.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metapt_core.assets import is_builtin
from metapt_core.errors import DataError
from metapt_core.prompt import META_FILE, load_prompt, peft_adapter_config, write_peft_adapter
from metapt_core.store import atomic_path

HISTORY_FILE = "history.json"
CARD_FILE = "README.md"
WHAT = {
    "metapt_maml": "MetaPT: second-order MAML over clustered auxiliary tasks",
    "metapt_fomaml": "MetaPT: first-order MAML over clustered auxiliary tasks",
    "metapt_reptile": "MetaPT: Reptile over clustered auxiliary tasks",
    "ppt": "PPT: the pooled pre-training rows as one task",
    "ppt_balanced": "class-balanced PPT: exactly MetaPT's episode rows, no inner step",
}


def init_name(meta: Mapping[str, Any]) -> str:
    """The grid's name of the initialisation a prompt folder holds (``metapt-maml`` ->
    ``metapt_maml``, ``ppt-balanced`` -> ``ppt_balanced``)."""
    return str(meta.get("made_by", "")).replace("-", "_")


def best_validation(history: Sequence[Mapping[str, Any]]) -> tuple[int, float] | None:
    """(step, loss) of the lowest held-out-cluster validation loss (``unseen_loss``), else of
    the lowest ``val_loss``; None when the history has neither."""
    for key in ("unseen_loss", "val_loss"):
        found = [
            (int(h.get("step", i)), float(h[key]))
            for i, h in enumerate(history)
            if isinstance(h.get(key), int | float) and math.isfinite(float(h[key]))
        ]
        if found:
            return min(found, key=lambda pair: pair[1])
    return None


def _budget(meta: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """``"60 steps of 32 rows"``: from the prompt's metadata (PPT writes it), else from the
    meta-learner's settings (``meta_steps`` of ``meta_batch_size * (support + query)`` rows)."""
    steps, rows = meta.get("steps"), meta.get("batch_size")
    episode = dict(settings.get("meta") or {})
    if steps is None and episode:
        steps = episode.get("meta_steps")
        rows = int(episode.get("meta_batch_size", 0)) * (
            int(episode.get("support_size", 0)) + int(episode.get("query_size", 0))
        )
    return f"{steps} steps of {rows} rows" if steps is not None else "budget not recorded"


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return lines


def evaluation_rows(results: Any, init: str, pretrain_seed: int) -> list[dict[str, Any]]:
    """Per (protocol, shots, task): this prompt's mean test accuracy and macro-F1 (percent) over
    the few-shot seeds of a report's ``results.csv`` frame, and the number of seeds."""
    part = results[(results["init"] == init) & (results["pretrain_seed"] == pretrain_seed)]
    rows = []
    for (protocol, shots, task), group in part.groupby(["protocol", "shots", "task"]):
        rows.append({
            "protocol": protocol, "shots": int(shots), "task": task,
            "accuracy": f"{100 * group['test_accuracy'].mean():.1f}",
            "macro_f1": f"{100 * group['test_macro_f1'].mean():.1f}",
            "few-shot seeds": len(group),
        })  # fmt: skip
    return rows


OBJECTIVE_COLUMNS = ("init", "loss_before", "loss_after", "after_low", "after_high", "trained",
                     "beats_ppt")  # fmt: skip


def objective_rows(check: Any, pretrain_seed: int) -> list[dict[str, Any]]:
    """The rows of a report's ``meta_objective.csv`` frame for one pre-training seed, formatted:
    the query loss after MetaPT's inner rule (what MAML minimises) of every prompt checked."""
    part = check[check["pretrain_seed"] == pretrain_seed]
    rows = []
    for _, row in part.iterrows():
        out: dict[str, Any] = {"init": row["init"], "chance": f"{float(row['chance']):.4f}"}
        for column in OBJECTIVE_COLUMNS[1:5]:
            out[column] = f"{float(row[column]):.3f}"
        for column in OBJECTIVE_COLUMNS[5:]:
            value = row.get(column)
            out[column] = "" if value is None or value != value else str(value).lower()
        rows.append(out)
    return rows


def _made_lines(
    meta: Mapping[str, Any],
    base_model: str,
    backbone_digest: str,
    record: Mapping[str, Any] | None,
) -> list[str]:
    """The card's "How it was made" bullets: backbone, algorithm and budget, seeds, the alpha
    calibration and the digests of the inputs."""
    settings = dict((record or {}).get("settings") or {})
    lines = [
        "## How it was made",
        "",
        f"- backbone: `{meta.get('backbone')}` (portable name `{base_model}`)"
        + (f", weights sha256 `{backbone_digest}`" if backbone_digest else ""),
        f"- algorithm: `{meta.get('made_by')}`, {_budget(meta, settings)}, initial prompt "
        f"`{meta.get('init')}`",
        f"- pre-training seed: {meta.get('seed')}; held-out clusters (never trained on): "
        f"{meta.get('held_out_clusters')}; inner learning rate alpha: {meta.get('inner_lr')}",
    ]
    calibration = meta.get("calibration") or {}
    if calibration.get("sweep"):
        gains = ", ".join(f"{s['alpha']:g}: {s['gain']:+.3f}" for s in calibration["sweep"])
        lines.append(
            f"- alpha chosen by the adaptation gain on the held-out clusters "
            f"({calibration.get('episodes')} episodes): {gains} -> {calibration.get('alpha')}"
        )
    upstream = dict((record or {}).get("upstream") or {})
    if upstream:
        lines.append(
            "- inputs (sha256): "
            + ", ".join(f"{k} `{v[:16]}`" for k, v in sorted(upstream.items()))
        )
    if is_builtin(str(meta.get("backbone", ""))):
        lines.append(
            "- trained against the embedded copy of the backbone (the digest above); another copy "
            "of the same model (the hub's full-precision weights) may score slightly differently"
        )
    return lines


def render_card(
    meta: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    base_model: str,
    backbone_digest: str = "",
    record: Mapping[str, Any] | None = None,
    evaluation: Sequence[Mapping[str, Any]] = (),
    source: str = "",
    objective: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The model card (Markdown, with the YAML front matter the hub reads).

    ``objective``: :func:`objective_rows` of the prompt's pre-training seed; the card then says
    whether MetaPT trained on that seed (its post-adaptation query loss against chance and its
    starting prompt) before any score is shown.
    """
    init = init_name(meta)
    settings = dict((record or {}).get("settings") or {})
    seq2seq = str(meta.get("task_type", "")) == "SEQ_2_SEQ_LM"
    auto_class = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags: [prompt-tuning, metapt]",
        "---",
        "",
        f"# {init} soft prompt ({meta.get('length')} x {meta.get('dim')})",
        "",
        f"A soft prompt for `{base_model}` learned by metapt ({WHAT.get(init, init)}). "
        f"Load it with `PeftModel.from_pretrained({auto_class}.from_pretrained("
        f'"{base_model}"), "<this folder>")`, or start prompt tuning from it with '
        "`--set prompt.init=file --set prompt.init_file=<this folder>`.",
        "",
        *_made_lines(meta, base_model, backbone_digest, record),
    ]
    if settings:
        lines += ["", "Settings it was trained with:", ""]
        lines += [f"- `{k}`: `{json.dumps(settings[k], sort_keys=True)}`"
                  for k in ("meta", "ppt", "prompt", "pool", "scoring") if k in settings]  # fmt: skip
    best = best_validation(history)
    if best is not None:
        lines += ["", f"Best validation loss {best[1]:.4f} at step {best[0]} "
                  f"(of {len(history)} logged steps)."]  # fmt: skip
    if meta.get("warnings"):
        lines += ["", "**Warnings from pre-training:** " + "; ".join(meta["warnings"])]
    if objective:
        lines += ["", "## Meta-objective check of its pre-training seed", "",
                  "Query loss (nats) on held-out-cluster episodes before and after MetaPT's "
                  "inner rule; after_low/after_high bound the loss after it (percentile "
                  f"bootstrap over episodes); chance is {objective[0].get('chance')}. MetaPT "
                  "`trained` when both its after-loss and its gain over the initial prompt are "
                  "bounded below chance and 0; it `beats_ppt` when its paired difference with "
                  "PPT is bounded below 0.",
                  "", *_table(objective, list(OBJECTIVE_COLUMNS))]  # fmt: skip
    if evaluation:
        lines += ["", "## Evaluation of this prompt", "",
                  "Mean over the few-shot seeds of its report (test accuracy and macro-F1, %):",
                  "", *_table(evaluation, list(evaluation[0]))]  # fmt: skip
    if source:
        lines += ["", f"Source: {source}"]
    return "\n".join(lines) + "\n"


def export_prompt(
    prompt_dir: str | Path,
    out_dir: str | Path,
    base_model: str,
    backbone_digest: str = "",
    record: Mapping[str, Any] | None = None,
    evaluation: Sequence[Mapping[str, Any]] = (),
    source: str = "",
    objective: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the adapter folder of ``prompt_dir`` to ``out_dir`` (atomically; see the module).

    Raises:
        DataError: ``prompt_dir`` holds no prompt, or no ``peft/adapter_config.json`` to read
            the backbone's layers and heads from.
    """
    folder = Path(prompt_dir)
    prompt, meta = load_prompt(folder)
    trained = folder / "peft" / "adapter_config.json"
    if not trained.is_file():
        raise DataError("prompt", str(folder), "has no peft/adapter_config.json")
    shape = json.loads(trained.read_text("utf-8"))
    history_file = folder / HISTORY_FILE
    history = json.loads(history_file.read_text("utf-8")) if history_file.is_file() else []
    config = peft_adapter_config(
        str(shape.get("task_type", "CAUSAL_LM")),
        int(prompt.shape[0]),
        int(prompt.shape[1]),
        int(shape.get("num_attention_heads", 1)),
        int(shape.get("num_layers", 1)),
        base_model,
    )
    target = Path(out_dir)
    with atomic_path(target) as tmp:
        write_peft_adapter(prompt, config, tmp)  # also what prompt.init: file reads
        shutil.copy2(folder / META_FILE, tmp / META_FILE)
        if history_file.is_file():
            shutil.copy2(history_file, tmp / HISTORY_FILE)
        card = render_card({**meta, "task_type": str(shape.get("task_type", "CAUSAL_LM"))},
                           history, base_model, backbone_digest, record, evaluation, source,
                           objective)  # fmt: skip
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    return target
