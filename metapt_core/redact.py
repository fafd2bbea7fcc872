"""Secrets kept out of what is printed and logged: refused in settings, masked in text.

URL passwords and API tokens become ``***``; credentials belong in the environment.
"""

from __future__ import annotations

import re

from metapt_core.config import PipelineConfig, flatten, to_dict
from metapt_core.errors import ConfigError

# Hugging Face and common API tokens: such a value in a setting would be logged with the config.
_TOKEN = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,})\b")


def redact(text: str) -> str:
    """``text`` with URL passwords and token-like strings replaced by ``***``."""
    text = re.sub(r"(//[^/@:\s]*:)[^/@\s]*@", r"\1***@", text)
    return _TOKEN.sub("***", text)


def check_no_secrets(cfg: PipelineConfig) -> None:
    """No setting holds a password or token: the resolved config is printed and logged whole.

    Credentials belong in the environment (``MLFLOW_TRACKING_PASSWORD``, ``HF_TOKEN``), never in
    the config; the error shows the value with the secret masked.
    """
    for name, value in flatten(to_dict(cfg)).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and redact(item) != item:
                raise ConfigError(
                    name,
                    redact(item),
                    "holds a password or token; pass credentials through environment variables",
                )
