"""Sampler backends, one module each, registered by name. Modules are imported only when chosen."""

from __future__ import annotations

import importlib
import importlib.util

from kopt.errors import KoptError, SamplerError
from kopt.samplers.base import Sampler, SamplerParams, derive_seed

__all__ = ["SAMPLERS", "Sampler", "SamplerParams", "default_sampler", "derive_seed", "get_sampler", "sampler_class"]

SAMPLERS: dict[str, str] = {
    "vllm": "kopt.samplers.vllm:VLLMSampler",
    "openai": "kopt.samplers.openai:OpenAISampler",
    "hf": "kopt.samplers.hf:HFSampler",
    "replay": "kopt.samplers.replay:ReplaySampler",
}


def sampler_class(name: str) -> type[Sampler]:
    """The backend class `name`, for its capabilities; importing its module loads no model."""
    if name not in SAMPLERS:
        raise KoptError(f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")
    module, _, cls = SAMPLERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_sampler(name: str, params: SamplerParams) -> Sampler:
    """Build the sampler `name`. The backend's heavy imports happen in its constructor."""
    return sampler_class(name)(params)


def _cuda_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch means no GPU for us
        return False


def default_sampler(params: SamplerParams) -> str:
    """replay if a samples file was given; openai if a base URL; vllm if it imports and a CUDA GPU is here."""
    if params.samples_path:
        return "replay"
    if params.base_url:
        return "openai"
    if importlib.util.find_spec("vllm") is not None and _cuda_present():
        return "vllm"
    raise SamplerError(
        "no sampler available: vLLM needs a CUDA GPU here and no --base-url or --samples was given",
        "pass --base-url URL (an OpenAI-compatible server), --samples FILE (replay), "
        "or --sampler hf --model DIR (transformers on CPU)",
    )
