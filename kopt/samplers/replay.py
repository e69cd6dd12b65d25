"""Replay a samples file (docs/design.md, "Samples file"): sample i is line i (blank lines skipped).

For re-ranking a pool someone already drew (the paper's released samples, another machine's run) without a
model. Only "text" is required; a line without "logprob"/"token_logprobs" yields a Sample with logprob None
(rank it with --select oracle|random). Not cacheable: the file is the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from kopt.errors import KoptError
from kopt.records import Sample
from kopt.samplers.base import Sampler, SamplerParams


class ReplaySampler(Sampler):
    name = "replay"
    cacheable = False
    follow_ups = True  # a recorded refine run's file holds its rounds: follow-up i is line i too

    @classmethod
    def identity(cls, params: SamplerParams) -> str:
        return params.model or "replay"

    def __init__(self, params: SamplerParams):
        super().__init__(params)
        if not params.samples_path:
            raise KoptError("the replay sampler needs a samples file", "pass --samples FILE (a samples.jsonl)")
        self.path = Path(params.samples_path)

    def model_id(self) -> str:
        return self.params.model or f"replay:{self.path.name}"

    def cache_params(self) -> dict:
        return {"sampler": self.name, "path": str(self.path.resolve())}

    def _read(self, count: int) -> list[Sample]:
        """The first `count` samples; parses only as far as needed."""
        try:
            fh = self.path.open(encoding="utf-8")
        except OSError as e:
            raise KoptError(f"cannot read samples file {self.path}: {e.strerror or e}",
                            "pass an existing samples.jsonl to --samples") from None
        out: list[Sample] = []
        with fh:
            for lineno, line in enumerate(fh, start=1):
                if len(out) >= count:
                    break
                if not line.strip():
                    continue
                try:
                    out.append(Sample.from_json(json.loads(line)))
                except json.JSONDecodeError as e:
                    raise KoptError(f"{self.path}:{lineno}: not valid JSON ({e.msg})",
                                    'each line must be one JSON object like {"text": "..."}') from None
                except ValueError as e:
                    raise KoptError(f"{self.path}:{lineno}: {e}",
                                    'each line must be one JSON object like {"text": "...", "logprob": -12.5}') from None
        return out

    def sample(self, prompt, indices: Sequence[int], adapter: str | None = None) -> Iterator[tuple[int, Sample]]:
        if adapter is not None:
            raise KoptError("the replay sampler cannot apply a LoRA adapter", "drop --ttt, or use --sampler vllm|hf")
        if not indices:
            return
        need = max(indices) + 1
        samples = self._read(need)
        if len(samples) < need:
            raise KoptError(f"{self.path} has {len(samples)} samples, but {need} were asked for",
                            f"pass --k {len(samples)} or a file with more lines")
        for i in indices:
            yield i, samples[i]
