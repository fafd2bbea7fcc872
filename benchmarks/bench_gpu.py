"""GPU throughput: bf16 prompt-tuning, evaluation and MAML per second, peak memory, share of bf16
peak, and peft's prompt tuning on the same GPU.

    .venv/bin/python benchmarks/bench_gpu.py                 # on one CUDA GPU (< 8 min on an H100)
    .venv/bin/python benchmarks/bench_gpu.py --dry-run       # tiny sizes on the CPU, to check it
    .venv/bin/python benchmarks/bench_gpu.py --backbones llama --steps 5

Nothing is downloaded: a T5-large (d_model 1024, d_ff 4096, 24 + 24 layers, 16 heads, d_kv 64,
vocab 32128) and a SmolLM2-135M-sized Llama (hidden 576, 30 layers, 9 heads, 3 KV heads,
intermediate 1536, vocab 49152, tied embeddings) are built from their configs, randomly
initialised on the GPU in float32 and run the pipeline's way (bf16 autocast, linear weights cast
once, packed passes, the prompt cache); only throughput is measured. Inputs are random token ids
(batch 32, 128 text tokens, a 100-token prompt) put straight into an ``EncodedBatch``; the
tokenizer (a tiny one trained on the fly) only serves PromptModel's start-up probe.

Per backbone, through ``metapt_core.lm.PromptModel`` and ``metapt_core.meta.maml``:
- prompt-tuning step (loss, backward, Adam) and second-order MAML step (one inner SGD step on
  16 support rows, query loss on the other 16, gradient through the inner step, Adam), timed
  interleaved; steps per second and the MAML/plain time ratio;
- evaluation: 4 prompts scored on 256 rows in one ``score_many`` call (examples/s);
- peft (Llama only): ``get_peft_model`` prompt tuning of an identical copy of the model under the
  same bf16 autocast, its documented recipe (full ``[B, P+L, V]`` logits, the label words at
  the answer position), a training step against metapt's (examples/s, ratio);
- peak GPU memory of each (``max_memory_allocated`` above what was allocated before);
- achieved FLOP/s (``FlopCounterMode`` count / median step time) against this GPU's own bf16
  matmul peak (best of 8192 x 8192 ``torch.mm`` repetitions).
When it ran on a GPU, it writes ``benchmarks/results/gpu.{md,json}``; ``run_all.py`` puts that
table into the benchmarks README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    REPO,
    Row,
    atomic_write,
    interleaved,
    machine,
    machine_line,
    markdown_table,
    median,
)
from bench_flops import count_flops

RESULTS = REPO / "benchmarks" / "results"


def t5_large_config(vocab: int, tiny: bool) -> Any:
    from transformers import T5Config

    dims: dict[str, Any] = dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16) if tiny else dict(
        d_model=1024, d_ff=4096, num_layers=24, num_heads=16, d_kv=64
    )  # fmt: skip
    return T5Config(  # type: ignore[call-arg]
        vocab_size=vocab,
        num_decoder_layers=dims["num_layers"],
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=True,  # as t5-large (v1.0) does
        **dims,
    )


def smollm2_config(vocab: int, tiny: bool) -> Any:
    from transformers import LlamaConfig

    dims: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128) if tiny else dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536)  # fmt: skip
    return LlamaConfig(
        vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=True, **dims
    )


def build_prompt_model(
    kind: str, device: torch.device, dtype: torch.dtype, tiny: bool, tmp: Path
) -> Any:
    """A PromptModel over a randomly initialised backbone of the given kind (``t5``/``llama``)."""
    from transformers import AutoTokenizer, LlamaForCausalLM, T5ForConditionalGeneration

    from metapt_core.backbone import Backbone
    from metapt_core.config import BackboneKind, ScoringConfig
    from metapt_core.lm import PromptModel
    from metapt_core.tiny import make_tiny_llama, make_tiny_t5

    cls: Any
    if kind == "t5":
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_t5(tmp / "t5-tok"))
        config, cls, bkind = (
            t5_large_config(32128, tiny),
            T5ForConditionalGeneration,
            BackboneKind.SEQ2SEQ,
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_llama(tmp / "llama-tok"))
        config, cls, bkind = smollm2_config(49152, tiny), LlamaForCausalLM, BackboneKind.CAUSAL
    model = random_model(cls, config, device)
    backbone = Backbone(
        model=model, tokenizer=tokenizer, kind=bkind, name=f"random-{kind}", device=device
    )
    # The pipeline's path: float32 weights, bf16 autocast with the linear weights cast once.
    return PromptModel(
        backbone, ScoringConfig(max_length=10_000), autocast_bf16=dtype == torch.bfloat16
    )


def random_model(cls: Any, config: Any, device: torch.device) -> Any:
    """A frozen float32 ``cls(config)`` on ``device``, seeded: two calls give the same weights."""
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = cls(config)
    model.requires_grad_(False)
    model.eval()
    return model


def random_batch(model: Any, rows: int, length: int, seed: int) -> Any:
    """An EncodedBatch of random token ids (all real tokens) and random binary labels."""
    from metapt_core.config import BackboneKind
    from metapt_core.lm import EncodedBatch

    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.embedding_matrix.shape[0])
    return EncodedBatch(
        input_ids=torch.randint(10, vocab, (rows, length), generator=gen).to(model.device),
        attention_mask=torch.ones((rows, length), dtype=torch.long, device=model.device),
        labels=torch.randint(0, 2, (rows,), generator=gen).to(model.device),
        label_tokens=((5,), (6,)),
        decoder_prefix=(0,) if model.kind is BackboneKind.SEQ2SEQ else (),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_backbone(kind: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   peak_flops: float) -> list[Row]:  # fmt: skip
    from metapt_core.config import MetaAlgorithm
    from metapt_core.meta.maml import Episode, meta_gradient

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model = build_prompt_model(kind, device, dtype, args.dry_run, Path(tmp))
        sync(device)
        print(f"gpu: built {kind} ({sum(p.numel() for p in model.model.parameters()) / 1e6:.0f}M params) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    print(f"gpu: {kind} scoring path: {model.path}", flush=True)
    if model.fallbacks:  # the benchmark measures the pipeline's own path or nothing
        raise SystemExit(f"gpu: {kind} fell back: {'; '.join(model.fallbacks)}")
    batch = random_batch(model, args.batch, args.length, seed=0)
    half = args.batch // 2
    episode = Episode(
        support=batch.select(range(half)), query=batch.select(range(half, args.batch))
    )
    prompt = (torch.randn(args.prompt, model.embed_dim) * 0.02).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([prompt], lr=0.03)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(prompt, batch).backward()
        optimizer.step()
        sync(device)

    def maml() -> None:
        optimizer.zero_grad(set_to_none=True)
        prompt.grad = meta_gradient(prompt, [episode], model.loss, MetaAlgorithm.MAML, 0.3, 1).grad
        optimizer.step()
        sync(device)

    memory: dict[str, float] = {}
    for name, fn in (("plain", plain), ("maml", maml)):
        fn()  # first call: lazy initialisation, kernels chosen
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            memory[name] = (torch.cuda.max_memory_allocated() - base) / 2**30
    flops = {"plain": count_flops(plain), "maml": count_flops(maml)}
    eval_batch = random_batch(model, args.eval_rows, args.length, seed=1)
    prompts = torch.stack([prompt.detach() * s for s in (1.0, -1.0, 0.5, 2.0)])

    def evaluate() -> None:
        model.score_many(prompts, eval_batch, args.batch)
        sync(device)

    arms = {"plain": plain, "maml": maml, "eval": evaluate}
    peft_step = peft_arm(kind, model, batch, prompt, device) if kind == "llama" else None
    if peft_step is not None:
        arms["peft"] = peft_step
    evaluate()
    times = interleaved(arms, args.steps, warmup=1 if peft_step is not None else 0)
    t_plain, t_maml, t_eval = median(times["plain"]), median(times["maml"]), median(times["eval"])
    shape = (
        f"{kind} B{args.batch} L{args.length} P{args.prompt} {str(dtype).removeprefix('torch.')}"
    )
    rows = [
        Row("7 gpu", f"{kind}: prompt-tuning steps/s", 1 / t_plain, None, "steps/s", "",
            f"{shape}; {args.batch / t_plain:.0f} examples/s"),
        Row("7 gpu", f"{kind}: evaluation examples/s", len(prompts) * args.eval_rows / t_eval, None,
            "examples/s", "", f"{len(prompts)} prompts x {args.eval_rows} rows, score_many"),
        Row("7 gpu", f"{kind}: MAML steps/s (S{half}+Q{args.batch - half}, k=1)", 1 / t_maml, None, "steps/s", "",
            f"{args.batch / t_maml:.0f} examples/s"),
        Row("7 gpu", f"{kind}: MAML step time vs prompt-tuning step", t_maml, t_plain, "s", "<=3.5", ""),
    ]  # fmt: skip
    if peft_step is not None:
        t_peft = median(times["peft"])
        rows.append(Row("7 gpu", f"{kind}: prompt-tuning examples/s, metapt vs peft", args.batch / t_plain,
                        args.batch / t_peft, "examples/s", "", "peft: get_peft_model, full logits, "
                        "same bf16 autocast"))  # fmt: skip
    if memory:
        rows.append(Row("7 gpu", f"{kind}: MAML peak memory vs prompt-tuning step", memory["maml"],
                        memory["plain"], "GiB above model", "<=2", ""))  # fmt: skip
    for name, t in (("prompt-tuning", t_plain), ("MAML", t_maml)):
        key = "plain" if name == "prompt-tuning" else "maml"
        rows.append(Row("7 gpu", f"{kind}: {name} step FLOP/s vs {str(dtype).removeprefix('torch.')} matmul peak",
                        flops[key] / t / 1e12, peak_flops / 1e12, "TFLOP/s", "",
                        f"{flops[key] / 1e12:.2f} TFLOP per step"))  # fmt: skip
    return rows


def peft_arm(kind: str, model: Any, batch: Any, prompt: torch.Tensor, device: torch.device) -> Any:
    """A peft prompt-tuning training step on an identical copy of ``model``'s backbone."""
    from bench_prompt_tuning import peft_answer_logits
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import LlamaForCausalLM

    base = random_model(LlamaForCausalLM, model.model.config, device)
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.shape[0])
    peft: Any = get_peft_model(base, config)
    peft.eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(prompt.detach())
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.03)
    label_ids = torch.tensor([5, 6], device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
        ):
            logits = peft_answer_logits(peft, batch, label_ids, prompt.shape[0]).float()
        torch.nn.functional.cross_entropy(logits, batch.labels).backward()
        optimizer.step()
        sync(device)

    return step


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best FLOP/s of ``reps`` ``n x n`` matmuls at ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)"
    )
    parser.add_argument("--backbones", default="llama,t5", help="comma-separated: llama, t5")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="text tokens per row")
    parser.add_argument("--prompt", type=int, default=100, help="prompt length")
    parser.add_argument("--eval-rows", type=int, default=256, help="rows scored per evaluation")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed rounds (each: one step of each arm)"
    )
    parser.add_argument("--json", default="", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    if args.dry_run:
        args.batch, args.length, args.prompt, args.steps, args.eval_rows = 4, 16, 8, 2, 8
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run it on a GPU, or --dry-run)")
        skipped = [Row("7 gpu", "GPU throughput", None, None, note="skipped: no CUDA device")]
        if args.json:
            atomic_write(
                Path(args.json), json.dumps([r.to_dict() for r in skipped], indent=2) + "\n"
            )
        return
    else:
        device = torch.device("cuda")
    dtype = torch.bfloat16
    peak = matmul_peak(device, dtype, 256 if args.dry_run else 8192, 3 if args.dry_run else 20)
    print(f"gpu: {device} bf16 matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    rows: list[Row] = []
    for kind in [k.strip() for k in args.backbones.split(",") if k.strip()]:
        if kind not in ("llama", "t5"):
            sys.exit(f"--backbones: unknown {kind!r} (llama, t5)")
        rows.extend(bench_backbone(kind, args, device, dtype, peak))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last backbone is gone: free its blocks for the next
    table = markdown_table(rows)
    print("\n## 7. GPU throughput\n\n" + table)
    if args.json:
        atomic_write(Path(args.json), json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    if device.type == "cuda" and not args.dry_run:
        info = machine()
        atomic_write(
            RESULTS / "gpu.json",
            json.dumps({"machine": info, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n",
        )
        atomic_write(RESULTS / "gpu.md", f"Machine: {machine_line(info)}\n\n{table}")


if __name__ == "__main__":
    main()
