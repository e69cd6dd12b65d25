"""The trusted reference child: `python -m kopt.evaluator.reference build SPEC.json`.

`build` imports the task (and, when there is one, its perturbed-shape variant), builds every trial's inputs
and runs Model. It writes OUT/inputs.pt (inputs, init inputs, Model's state_dict: candidates may read it) and
OUT/reference.pt (outputs and their float64 oracle: kopt reads it back into memory and deletes it; no
candidate session mounts either, their inputs travel over the protocol). Timing the reference is not done
here: it runs through the same harness as every candidate (kopt_child, cls Model), so both pay the same
per-call overhead. Shape variants come from shapes.choose (every size odd, when the reference takes it).

Trials (hacking-and-sandbox.md §2): trial 0 is the task's own get_inputs(); the others redraw every floating
input as N(0,1), mixed sign (KernelBench's torch.rand [0,1) makes ReLU/HardTanh the identity, hack #3). If the
reference is non-finite on the redrawn inputs but finite on its own (log, sqrt), every trial falls back to
the task's own distribution, with a warning.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

BASE_SEED = 42  # KernelBench's seed for trial 0
SEED_STRIDE = 1009


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _redraw(inputs: list, torch, gen) -> list:
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.dtype))
        else:
            out.append(x)
    return out


def _run(module, seed: int, redraw: bool, torch, device: str = "cpu") -> dict:
    torch.manual_seed(seed)
    inputs = list(module.get_inputs())
    if redraw:
        gen = torch.Generator().manual_seed(seed)
        inputs = _redraw(inputs, torch, gen)
    init = module.get_init_inputs()
    torch.manual_seed(seed)  # seed, then construct (KernelBench); ModelNew is built the same way
    model = module.Model(**init) if isinstance(init, dict) else module.Model(*init)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sent = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    model = model.to(device)
    args = [x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs]
    with torch.no_grad():
        out = model(*args)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    outs = [o.detach().cpu().clone() for o in outs]
    init_s = init if isinstance(init, dict) else list(init)
    from kopt.evaluator.oracle import run_oracle

    oracle = run_oracle(model, args, device=device)  # the same model and inputs, in float64
    return {"seed": seed, "inputs": sent, "init": init_s, "state_dict": state, "outputs": outs,
            "oracle": list(oracle.outputs) if not oracle.error else None, "oracle_error": oracle.error,
            # how many inputs each output element sums over: the oracle rule's allowance for long reductions
            "fan_in": [None if f is None else int(f) for f in oracle.fan_in] if not oracle.error else None}


def _finite(outs, torch) -> bool:
    return all(bool(torch.isfinite(o).all()) for o in outs if o.is_floating_point())


def build(spec: dict, torch) -> dict:
    if spec.get("search_path"):
        sys.path.insert(0, spec["search_path"])
    module = _load(spec["task"], "kopt_task")
    warnings: list[str] = []
    dev = spec.get("device", "cpu")
    n = int(spec["trials"])
    t_start = time.perf_counter()
    seeds = [BASE_SEED + SEED_STRIDE * k for k in range(n)]
    trials = [dict(_run(module, seeds[0], False, torch, dev), tag="task inputs")]
    redraw = True
    if n > 1:
        probe = _run(module, seeds[1], True, torch, dev)
        if _finite(trials[0]["outputs"], torch) and not _finite(probe["outputs"], torch):
            redraw = False
            warnings.append("the reference is not finite on N(0,1) inputs (a domain-restricted op?): every trial "
                            "uses the task's own input distribution")
        else:
            trials.append(dict(probe, tag="N(0,1) inputs"))
    for seed in seeds[len(trials):]:
        trials.append(dict(_run(module, seed, redraw, torch, dev), tag="N(0,1) inputs" if redraw else "task inputs"))
    if spec.get("shapes", True):
        # Another shape for every size get_inputs reads (odd, non-power-of-two), when the reference takes it.
        from kopt.evaluator.shapes import choose, reference_accepts

        source = Path(spec["task"]).read_text()
        variants, notes = choose(source, reference_accepts)
        warnings += notes
        out_dir = Path(spec["out_dir"])
        for k, v in enumerate(variants):
            path = out_dir / f"variant_{k}.py"
            path.write_text(v.source)
            try:
                trial = _run(_load(str(path), f"kopt_task_variant_{k}"), BASE_SEED + SEED_STRIDE * (n + k), redraw,
                             torch, dev)
                trials.append(dict(trial, tag=f"shape variant ({v.description})"))
            except Exception as e:  # noqa: BLE001 - accepted once, failing now: say so, skip it
                warnings.append(f"no shape trial ({v.description}): the reference fails on it "
                                f"({type(e).__name__})"[:300])
    check_s = time.perf_counter() - t_start  # the reference's own trials: what a candidate's budget scales from
    out_dir = Path(spec["out_dir"])
    torch.save({"trials": [{k: v for k, v in t.items() if k not in ("outputs", "oracle", "oracle_error", "fan_in")}
                           for t in trials]}, out_dir / "inputs.pt")
    torch.save({"outputs": [t["outputs"] for t in trials], "oracle": [t["oracle"] for t in trials],
                "fan_in": [t["fan_in"] for t in trials]},
               out_dir / "reference.pt")
    oracle_errors = sorted({t["oracle_error"] for t in trials if t["oracle_error"]})
    warnings += [f"no float64 oracle: {e}"[:300] for e in oracle_errors[:1]]
    return {"ok": True, "warnings": warnings, "tags": [t["tag"] for t in trials], "check_s": check_s}


def main(argv: list[str]) -> int:
    mode, spec_path = argv[0], argv[1]
    spec = json.loads(Path(spec_path).read_text())
    out_dir = Path(spec["out_dir"])
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        result = {"build": build}[mode](spec, torch)
    except Exception as e:  # noqa: BLE001 - the user's reference failed: report it, kopt raises TaskError
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:600]}
    tmp = out_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out_dir / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
