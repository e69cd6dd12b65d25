"""What the trusted reference child measured, held in kopt's memory only: every trial's inputs, the
reference's outputs, the float64 oracle, the per-output fan-in and each trial's tag.

Reference outputs never stay on disk while a candidate runs (hacking-and-sandbox.md hack #17): `load` reads
the reference child's file and deletes it in the same step. Everything a session needs from the reference
(the trials it replays, the models it builds, how many bytes a revealed call may carry) is derived here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReferenceData:
    outputs: tuple  # per trial: the reference's outputs (tensors)
    inputs: tuple  # per trial: {"inputs", "init", "seed", "state_dict"?}
    tags: tuple[str, ...]  # per trial: "" or what the trial varies ("shape variant ...", "edge values ...")
    warnings: tuple[str, ...]
    check_s: float  # the reference's own time for one check pass (sizes session budgets)
    oracle: tuple  # per trial: float64 outputs, or None where there is none or tolerances were loosened
    fan_in: tuple  # per trial: per-output fan-in, or None

    def tag(self, trial: int) -> str:
        return self.tags[trial] if trial < len(self.tags) else ""

    def label(self, trial: int) -> str:
        tag = self.tag(trial)
        return f"trial {trial} ({tag})" if tag else f"trial {trial}"

    def trials(self):
        from kopt.evaluator.calls import Trial

        return [Trial(model=i, inputs=list(t["inputs"]), outputs=self.outputs[i], tag=self.tag(i))
                for i, t in enumerate(self.inputs)]

    def model_specs(self) -> tuple:
        from kopt.evaluator.session import ModelSpec

        specs = []
        for t in self.inputs:
            init = t["init"]
            args, kwargs = ((), dict(init)) if isinstance(init, dict) else (tuple(init), {})
            specs.append(ModelSpec(args=args, kwargs=kwargs, seed=int(t["seed"]),
                                   state=tuple(sorted(t.get("state_dict", {}).items()))))
        return tuple(specs)

    def max_reveal_bytes(self) -> int:
        """What one revealed call may carry: 4x the largest reference call's outputs and inputs, + 1 MiB."""
        from kopt.evaluator.session import tensor_bytes

        big = 0
        for t, outs in zip(self.inputs, self.outputs):
            n = sum(len(tensor_bytes(x)) for x in list(t["inputs"]) + list(outs) if hasattr(x, "dtype"))
            big = max(big, n)
        return 4 * big + (1 << 20)

    def timed_trials(self) -> list[int]:
        # Timed calls are fresh draws around the first trial's inputs, all on that trial's model: one instance
        # sees every timed call, so a kernel that goes stale after N calls on an instance (N larger than the
        # check run's calls per instance) is stale inside the revealed calls. Each trial has its own model.
        return [next(i for i, tag in enumerate(self.tags) if not tag.startswith("shape variant"))]

    def oracle_for(self, trial: int):
        return self.oracle[trial] if trial < len(self.oracle) else None

    def fan_in_for(self, trial: int):
        """Trial `trial`'s per-output fan-in; later trials of one shape reuse the first's (oracle.run_oracle)."""
        own = self.fan_in[trial] if trial < len(self.fan_in) else None
        if own and any(f is not None for f in own):
            return own
        first = self.fan_in[0] if self.fan_in else None
        same = (trial < len(self.outputs) and self.outputs and
                [tuple(o.shape) for o in self.outputs[trial]] == [tuple(o.shape) for o in self.outputs[0]])
        return first if same else own


def load(ref_dir: Path, result: dict, *, loosened: bool) -> ReferenceData:
    """The reference child's files in `ref_dir` (its result.json already parsed as `result`), outputs deleted
    from disk as they are read. `loosened`: the user set --atol/--rtol, so the float64 oracle rule is off (it
    holds only at kopt's own tolerances)."""
    import torch

    ref_file = ref_dir / "reference.pt"
    try:
        loaded = torch.load(ref_file, weights_only=True)  # the trusted reference child's file
        outputs, oracle = loaded["outputs"], loaded.get("oracle") or []
        fan_in = loaded.get("fan_in") or []
        inputs = torch.load(ref_dir / "inputs.pt", weights_only=True)["trials"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            ref_file.unlink()
    n = len(outputs)
    return ReferenceData(
        outputs=tuple(outputs), inputs=tuple(inputs), tags=tuple(result.get("tags", [])),
        warnings=tuple(result.get("warnings", [])), check_s=float(result.get("check_s", 0.0)),
        oracle=tuple([None if loosened else o for o in oracle] + [None] * (n - len(oracle))),
        fan_in=tuple(list(fan_in) + [None] * (n - len(fan_in))))
