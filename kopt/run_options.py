"""What decides which samples a pool draws and how they are judged (RunOptions, defaults from
kopt/settings.py), and the small content hashes and atomic writes the pool's cache keys and files use."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from kopt import settings as S


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides which samples are drawn and how they are judged (defaults: kopt/settings.py)."""

    sampler: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api: str = S.default("api")
    samples: Path | None = None
    k: int = S.default("k")
    temperature: float = S.default("temperature")
    max_tokens: int = S.default("max_tokens")
    seed: int = S.default("seed")
    target: str = S.default("target")
    jobs: int = S.default("jobs")
    executor: str = S.default("executor")
    ray_address: str | None = None
    devices: str | None = None  # --devices: local GPUs by nvidia-smi index (None: every visible one)
    timeout_s: float = S.default("timeout_s")
    compile_timeout_s: float = S.default("compile_timeout_s")
    atol: float | None = None
    rtol: float | None = None
    threads: int | None = None
    no_cache: bool = False
    prompt_template: Path | None = None
    surprisal: str = S.default("surprisal")
    enable_lora: bool = False  # the sampler must take LoRA adapters (TTT)
    max_lora_rank: int = S.default("lora_rank")

    def __post_init__(self) -> None:
        S.check_fields(self, [f.name for f in fields(self)])
        for name in ("samples", "prompt_template"):  # a library caller may pass a str
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @classmethod
    def from_settings(cls, values: dict[str, Any], **overrides: Any) -> RunOptions:
        """From a command's resolved settings (kopt.config.settings_for)."""
        kw = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        kw.update(overrides)
        return cls(**kw)

    def sampler_params(self):
        from kopt.samplers import SamplerParams

        same = {f.name: getattr(self, f.name) for f in fields(SamplerParams) if hasattr(self, f.name)}
        return SamplerParams(**same, samples_path=str(self.samples) if self.samples else None)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def adapter_id(adapter: str | None) -> str | None:
    """An adapter is identified by its weights' content, not its path (paths are reused across runs)."""
    if adapter is None:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(adapter).glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


__all__ = ["RunOptions", "adapter_id", "sha256_text", "write_jsonl_atomic"]
