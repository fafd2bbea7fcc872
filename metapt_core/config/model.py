"""The model sections: the frozen backbone, the soft prompt, how classes are scored."""

from __future__ import annotations

from dataclasses import dataclass

from metapt_core.config.checks import _positive
from metapt_core.config.enums import BackboneKind, DType, LossKind, PromptInit, ScoringMode
from metapt_core.errors import ConfigError


@dataclass
class BackboneConfig:
    """The frozen language model."""

    name_or_path: str = "builtin:smollm2-135m"  # or a hub name or a local folder
    kind: BackboneKind = BackboneKind.AUTO
    dtype: DType = DType.FLOAT32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast on CUDA, and on CPUs with bf16 instructions where a pipeline run measures
    # it faster than fp32 at the backbone's shapes (metapt_core/scoring/dtype_probe.py).
    autocast_bf16: bool = False
    trust_remote_code: bool = False
    revision: str = ""

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ConfigError("backbone.name_or_path", self.name_or_path, "is empty")
        if not (self.device in {"auto", "cpu", "cuda"} or self.device.startswith("cuda:")):
            raise ConfigError("backbone.device", self.device, "must be auto, cpu, cuda or cuda:N")


@dataclass
class PromptConfig:
    """The soft prompt."""

    length: int = 20
    init: PromptInit = PromptInit.SAMPLE_VOCAB
    init_text: str = ""
    init_file: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length <= 0:
            raise ConfigError("prompt.length", self.length, "must be a positive integer")
        if self.init is PromptInit.TEXT and not self.init_text:
            raise ConfigError("prompt.init_text", self.init_text, "is needed when prompt.init=text")
        if self.init is PromptInit.FILE and not self.init_file:
            raise ConfigError("prompt.init_file", self.init_file, "is needed when prompt.init=file")


@dataclass
class ScoringConfig:
    """How classes are scored and prompts are trained."""

    mode: ScoringMode = ScoringMode.FIRST_TOKEN
    loss: LossKind = LossKind.VERBALIZER
    prompt_cache: bool = (
        True  # causal LMs: evaluation runs each prompt once, reuses its keys/values
    )
    packing: bool = True  # causal LMs: a prompt and its rows as one sequence, no padding
    pack_tokens: int = 256  # causal LMs: text tokens per packed sequence (and evaluation chunk)
    max_length: int = 64  # text tokens after templating; longer texts are cut from the left

    def __post_init__(self) -> None:
        _positive("scoring.max_length", self.max_length)
        _positive("scoring.pack_tokens", self.pack_tokens)
