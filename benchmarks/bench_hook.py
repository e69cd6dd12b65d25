"""Wall time of the kopt pre-merge-commit hook during real `git merge` runs (issue 6's closing figure).

Builds a temp repo (tests/check_helpers.py: a reference module and its kernel dir), installs the hook, then
times `git merge` for:
  no-op      a merge that touches neither the reference nor the kernel (aim: < 2 s),
  blocking   a merge that edits the reference, cold (the stale kernel is compiled and checked),
  blocking   the same merge again, warm (the verdict comes from the cache).
kopt's venv is not on PATH; KOPT_HOME and HOME are temp dirs. Usage:
    MAX_JOBS=1 .venv/bin/python benchmarks/bench_hook.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from check_helpers import REF, env_for, git, make_repo  # noqa: E402


def timed_merge(repo: Path, env: dict, name: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    res = git(repo, "merge", "--no-edit", name, env=env, check=False)
    return res.returncode, time.perf_counter() - t0


def prepare(root: Path, env: dict, edit_reference: bool) -> Path:
    repo = make_repo(root, env)
    subprocess.run([sys.executable, "-m", "kopt", "hook", "install"], cwd=repo, env=env, check=True,
                   capture_output=True)
    git(repo, "checkout", "-q", "-b", "side", env=env)
    if edit_reference:
        (repo / "models" / "affine.py").write_text(REF.replace("x * 2.0 + 1.0", "x * 3.0 + 1.0"))
    else:
        (repo / "README.md").write_text("unrelated\n")
    git(repo, "commit", "-qam", "side", env=env)
    git(repo, "checkout", "-q", "main", env=env)
    (repo / "NOTES.md").write_text("main moved on\n")
    git(repo, "add", "NOTES.md", env=env)
    git(repo, "commit", "-q", "-m", "main", env=env)
    return repo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kopt-bench-hook-") as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "home").mkdir()
        env = env_for(tmp_p / "home", tmp_p / "kopt-home")
        noop = []
        for i in range(args.repeat):
            repo = prepare(tmp_p / f"noop{i}", env, edit_reference=False)
            rc, s = timed_merge(repo, env, "side")
            assert rc == 0, "the no-op merge was blocked"
            noop.append(s)
        blocking = []
        for i in range(2):  # cold (compile + check), then warm (cached verdict)
            repo = prepare(tmp_p / f"block{i}", env, edit_reference=True)
            rc, s = timed_merge(repo, env, "side")
            assert rc != 0, "the stale merge was not blocked"
            blocking.append(s)
    print(json.dumps({
        "noop_merge_s": {"median": round(statistics.median(noop), 3), "min": round(min(noop), 3),
                         "max": round(max(noop), 3), "n": len(noop)},
        "blocking_merge_cold_s": round(blocking[0], 3),
        "blocking_merge_warm_s": round(blocking[1], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
