"""Flax NNX Qwen2/Llama decoder, value head, HF safetensors in/out, sampler, chunked log-probs, tokenizers."""

from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM, KVCache, ValueModel, init_kv_cache
from ntl_jax.models.hf_io import from_pretrained, load_hf_state, save_pretrained
from ntl_jax.models.logprobs import TokenLogProbs, sequence_logprobs, token_logprobs
from ntl_jax.models.sampler import GenerationOutput, Sampler, SamplingParams
from ntl_jax.models.tokenizers import build_char_tokenizer, load_tokenizer, save_char_tokenizer

__all__ = [
    "ModelConfig", "CausalLM", "KVCache", "ValueModel", "init_kv_cache", "from_pretrained", "load_hf_state",
    "save_pretrained", "TokenLogProbs", "sequence_logprobs", "token_logprobs", "GenerationOutput", "Sampler",
    "SamplingParams", "build_char_tokenizer", "load_tokenizer", "save_char_tokenizer",
]
