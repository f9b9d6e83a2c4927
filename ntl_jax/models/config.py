"""Decoder configuration read from / written to a Hugging Face ``config.json`` (Qwen2 and Llama families)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
# rope types implemented by `decoder.rope_inv_freq`; anything else is refused rather than silently mis-computed.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_TOKEN_CLASSIFICATION_ARCHITECTURES = {"qwen2": "Qwen2ForTokenClassification", "llama": "LlamaForTokenClassification"}


def _freeze(value: Any) -> Any:
    """Dicts -> sorted item tuples and lists -> tuples, so the config stays hashable (usable as a jit static arg)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Qwen2 / Llama decoder.

    `attention_bias`: Qwen2 -> bias on q/k/v only (HF Qwen2 always has it); Llama -> bias on q/k/v/o.
    `rope_scaling`: None or a sorted tuple of (key, value) items of HF's `rope_scaling`/`rope_parameters` (hashable).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    max_position_embeddings: int = 2048
    model_type: str = "qwen2"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    mlp_bias: bool = False
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name}={value!r}; allowed: a positive int")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
            raise ValueError(f"ModelConfig.head_dim={self.head_dim!r}; allowed: None or a positive int")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"ModelConfig.num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ModelConfig.hidden_size={self.hidden_size} not divisible by "
                             f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly")
        if self.dim_per_head % 2:
            raise ValueError(f"ModelConfig head dim {self.dim_per_head} must be even for RoPE")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"ModelConfig.model_type={self.model_type!r}; allowed: {SUPPORTED_MODEL_TYPES}")
        if self.hidden_act != "silu":
            raise ValueError(f"ModelConfig.hidden_act={self.hidden_act!r}; allowed: 'silu'")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(f"ModelConfig rope_theta={self.rope_theta}, rms_norm_eps={self.rms_norm_eps}; "
                             "allowed: positive floats")
        if isinstance(self.rope_scaling, dict) or isinstance(self.eos_token_id, list):
            object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
            object.__setattr__(self, "eos_token_id", _freeze(self.eos_token_id))
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling_dict.get("rope_type", self.rope_scaling_dict.get("type"))
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"ModelConfig rope_scaling type {rope_type!r} is not implemented; "
                                 f"allowed: {SUPPORTED_ROPE_TYPES}")

    @property
    def dim_per_head(self) -> int:
        """Head dimension: explicit `head_dim`, else hidden_size / num_attention_heads."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling) if self.rope_scaling is not None else {}

    @property
    def o_proj_bias(self) -> bool:
        """HF Qwen2 has no o_proj bias; HF Llama's `attention_bias` covers o_proj too."""
        return self.model_type == "llama" and self.attention_bias

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a HF config dict (transformers 4 `rope_theta`/`rope_scaling` or 5 `rope_parameters` style)."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config model_type={model_type!r}; allowed: {SUPPORTED_MODEL_TYPES}")
        if d.get("use_sliding_window", False):
            raise ValueError("config use_sliding_window=True is not implemented; allowed: false")
        rope = dict(d.get("rope_parameters") or {})
        rope_theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        rope.update(d.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_scaling = None if rope_type == "default" else _freeze(rope)
        if model_type == "qwen2":
            attention_bias, mlp_bias = True, False
        else:
            attention_bias, mlp_bias = bool(d.get("attention_bias", False)), bool(d.get("mlp_bias", False))
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            head_dim=d.get("head_dim"),
            rope_theta=rope_theta,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            model_type=model_type,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_freeze(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
            mlp_bias=mlp_bias,
            rope_scaling=rope_scaling,
            hidden_act=d.get("hidden_act", "silu"),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "ModelConfig":
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise ValueError(f"no config.json in {os.fspath(path)!r}; allowed: a Hugging Face model directory")
        with open(config_path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f))

    def to_hf_dict(self, *, dtype: str = "float32", token_classification: bool = False) -> dict[str, Any]:
        """HF config dict; `token_classification` describes a value model (`*ForTokenClassification`, 1 label)."""
        rope_parameters = {"rope_type": "default", **self.rope_scaling_dict, "rope_theta": self.rope_theta}
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        archs = _TOKEN_CLASSIFICATION_ARCHITECTURES if token_classification else _ARCHITECTURES
        d: dict[str, Any] = {
            "architectures": [archs[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
            "use_cache": True,
        }
        if self.head_dim is not None:
            d["head_dim"] = self.head_dim
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(self.rope_scaling_dict)
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = self.mlp_bias
        else:
            d["use_sliding_window"] = False
        if token_classification:
            d["num_labels"] = 1
            d["id2label"] = {"0": "LABEL_0"}
            d["label2id"] = {"LABEL_0": 0}
        return d


def generation_eos_token_ids(path: str | os.PathLike) -> tuple[int, ...]:
    """``eos_token_id`` of ``<path>/generation_config.json`` (int or list) as a tuple; () when there is none.

    HF ``generate`` stops on these; a chat model's (Qwen2.5-Instruct: ``<|im_end|>`` and ``<|endoftext|>``) often
    differ from ``config.json``'s single ``eos_token_id``.
    """
    config_path = os.path.join(os.fspath(path), "generation_config.json")
    if not os.path.isfile(config_path):
        return ()
    with open(config_path, encoding="utf-8") as f:
        value = json.load(f).get("eos_token_id")
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{config_path}: eos_token_id={value!r} is invalid; allowed: a token id or a list of them")
    return tuple(values)


def stop_token_ids(tokenizer: Any, *model_eos: Any) -> list[int]:
    """Stop tokens: the tokenizer's eos, config.json's and generation_config.json's (HF generate stops on the last)."""
    ids = set()
    for value in (tokenizer.eos_token_id, *model_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer and model config define no eos_token_id; set one in the tokenizer")
    return sorted(ids)
