"""Model locations: a local Hugging Face folder, or a Hub id resolved through ``huggingface_hub``'s local cache.

``resolve_model_path('Qwen/Qwen2.5-0.5B-Instruct')`` downloads the snapshot once (or, with ``HF_HUB_OFFLINE=1``,
only reads the cache) and returns its folder; a path that exists is returned as it is.
"""
from __future__ import annotations

import os
import re

_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_HUB_ID_RE.fullmatch(text)) and not os.path.exists(text)


def resolve_model_path(path_or_id: str, *, revision: str | None = None) -> str:
    """A local folder for ``path_or_id``; one line naming the value when it is neither a folder nor a Hub id."""
    text = os.fspath(path_or_id)
    if os.path.isdir(text):
        return text
    if not is_hub_id(text):
        raise ValueError(f"model {text!r} is not a folder or a Hub id; allowed: a Hugging Face model folder or "
                         "'owner/name' (e.g. 'Qwen/Qwen2.5-0.5B-Instruct')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id=text, revision=revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except LocalEntryNotFoundError as err:
        raise ValueError(f"model {text!r} is not in the Hugging Face cache and cannot be downloaded "
                         f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}); fetch it with: hf download "
                         f"{text}") from err
