"""`kopt check` on real git repositories with a real kernel dir; correctness runs through the real evaluator."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from check_helpers import REF, env_for, git, kopt_cmd, make_repo, write_kernel

from kopt.check import CheckSettings, Verdict, run_check
from kopt.errors import KoptError


@pytest.fixture(autouse=True)
def shared_home(kopt_home, shared_kopt_home, monkeypatch) -> Path:
    # One KOPT_HOME for the module, so the candidate's extension and the verdicts are built once.
    monkeypatch.setenv("KOPT_HOME", str(shared_kopt_home))
    monkeypatch.setenv("MAX_JOBS", "1")
    return shared_kopt_home


@pytest.fixture
def repo(tmp_path, shared_kopt_home) -> tuple[Path, dict]:
    env = env_for(tmp_path / "home", shared_kopt_home)
    (tmp_path / "home").mkdir()
    return make_repo(tmp_path, env), env


def one(report):
    assert len(report.results) == 1, report
    return report.results[0]


def test_unchanged_kernel_passes_without_running_anything(repo):
    path, _ = repo
    t0 = time.perf_counter()
    r = one(run_check(cwd=path))
    assert r.verdict is Verdict.PASS and r.correctness == "recorded" and not r.stale and not r.edited
    assert time.perf_counter() - t0 < 1.0
    assert r.kernel_dir == "kernels/affine" and r.reference == "models/affine.py"


def test_comment_only_edit_is_not_stale(repo):
    path, _ = repo
    ref = path / "models" / "affine.py"
    ref.write_text("# a comment\n" + REF.replace("        return x", "        # scale and shift\n        return   x"))
    assert one(run_check(cwd=path)).verdict is Verdict.PASS


def test_cli_exit_codes_and_json(repo):
    path, env = repo
    ok = subprocess.run(kopt_cmd("check", "--json"), cwd=path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] and data["checked"][0]["verdict"] == "pass"
    (path / "kernels" / "affine" / "kernel.cpp").write_text("// edited by hand\n")
    bad = subprocess.run(kopt_cmd("check"), cwd=path, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "mismatch" in bad.stdout and "git checkout -- kernels/affine" in bad.stdout


def test_reference_change_is_stale_with_fix_command_and_cached_verdict(repo):
    path, _ = repo
    (path / "models" / "affine.py").write_text(REF.replace("x * 2.0 + 1.0", "x * 3.0 + 1.0"))
    r = one(run_check(cwd=path, settings=CheckSettings(timing=False)))
    assert r.verdict is Verdict.STALE and r.stale
    assert r.correctness == "checked" and r.status == "incorrect", r
    assert r.fix.startswith("kopt optimize models/affine.py") and "--force" in r.fix
    # New samples: replaying the old pool cannot produce a kernel for the new reference. This pool was written by
    # hand (model "hand-written"), so there is no model to name and the user's default sampler draws them.
    assert "--model" not in r.fix and "--k 1" in r.fix and "--out kernels/affine" in r.fix
    assert "replay" not in r.fix and "samples.jsonl" not in r.fix
    # The verdict is cached by (code, task hash, machine, settings): a re-check spawns nothing.
    t0 = time.perf_counter()
    again = one(run_check(cwd=path, settings=CheckSettings(timing=False)))
    assert again.verdict is Verdict.STALE and again.correctness == "cached"
    assert time.perf_counter() - t0 < 2.0


def test_corrupted_kernel_is_incorrect(repo):
    path, _ = repo
    kdir = path / "kernels" / "affine"
    for name in ("model_new.py", "kernel.cpp"):
        f = kdir / name
        f.write_text(f.read_text().replace("* 2.0f + 1.0f", "* 2.0f + 1.5f"))
    r = one(run_check(cwd=path, settings=CheckSettings(timing=False)))
    assert r.edited and not r.stale
    assert r.verdict is Verdict.INCORRECT and r.status == "incorrect", r


def test_edited_but_correct_kernel_passes(repo):
    path, _ = repo
    kdir = path / "kernels" / "affine"
    (kdir / "model_new.py").write_text((kdir / "model_new.py").read_text() + "\n# tuned later by hand\n")
    r = one(run_check(cwd=path, settings=CheckSettings(timing=False)))
    assert r.edited and r.verdict is Verdict.PASS and r.status == "correct", r


def test_base_selects_only_changed_kernels(repo):
    path, env = repo
    write_kernel(path, ref_rel="models/affine.py", out_rel="kernels/other")
    git(path, "add", ".", env=env)
    git(path, "commit", "-q", "-m", "second kernel", env=env)
    git(path, "checkout", "-q", "-b", "feature", env=env)
    (path / "README.md").write_text("unrelated\n")
    git(path, "commit", "-qam", "docs", env=env)
    rep = run_check(cwd=path, base="main")
    assert rep.results == () and sorted(rep.not_selected) == ["kernels/affine", "kernels/other"]
    (path / "kernels" / "other" / "kernel.cpp").write_text("// edited\n")  # uncommitted changes count too
    rep = run_check(cwd=path, base="main")
    assert [r.kernel_dir for r in rep.results] == ["kernels/other"]
    assert rep.results[0].verdict is Verdict.MISMATCH
    with pytest.raises(KoptError, match="no-such-branch"):
        run_check(cwd=path, base="no-such-branch")


def test_missing_reference_is_broken(repo):
    path, _ = repo
    (path / "models" / "affine.py").unlink()
    r = one(run_check(cwd=path))
    assert r.verdict is Verdict.BROKEN and "no such file" in r.reason


def test_cuda_kernel_without_gpu_says_what_was_skipped(tmp_path):
    repo = tmp_path / "r"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "affine.py").write_text(REF)
    write_kernel(repo, target="cuda")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = one(run_check(cwd=repo, settings=CheckSettings(check_all=True)))
    assert r.verdict is Verdict.PASS and r.correctness == "skipped"
    assert any("no CUDA GPU" in s and s.startswith("correctness") for s in r.skipped)
    assert any(s.startswith("timing") for s in r.skipped)


def test_paths_argument(repo):
    path, _ = repo
    assert one(run_check([path / "kernels" / "affine"], cwd=path)).verdict is Verdict.PASS
    assert one(run_check([path / "kernels"], cwd=path)).verdict is Verdict.PASS
    with pytest.raises(KoptError, match="no kernel directory"):
        run_check([path / "models"], cwd=path)


def test_kernel_record_round_trips_and_reads_old_reports(repo):
    from kopt import kernels

    path, _ = repo
    kdir = path / "kernels" / "affine"
    data = json.loads((kdir / "report.json").read_text())
    assert isinstance(data["eval_settings"], dict)  # an object, not a JSON string inside the JSON
    record = kernels.read(kdir)
    assert record.to_json() == data
    assert record.task.class_name == "Model" and record.winner.index == 0
    assert record.reference_target(kdir) == str(path / "models" / "affine.py")
    # A report from before the typed record: eval_settings a string, no target_from_kernel_dir, no model_new hash.
    old = dict(data, eval_settings=json.dumps({"target": "cpu", "atol": 1e-3}))
    old["task"] = {k: v for k, v in data["task"].items() if k != "target_from_kernel_dir"}
    old["winner"] = {k: v for k, v in data["winner"].items() if k != "model_new_sha256"}
    (kdir / "report.json").write_text(json.dumps(old))
    record = kernels.read(kdir)
    assert record.eval_settings["atol"] == 1e-3 and record.task.target_from_kernel_dir is None
    assert not kernels.integrity(kdir, record).edited  # matched by the candidate's code hash instead
    assert one(run_check(cwd=path)).verdict is Verdict.PASS
    (kdir / "report.json").write_text("{not json")
    r = one(run_check(cwd=path))
    assert r.verdict is Verdict.BROKEN and "unreadable" in r.reason


def test_table_keeps_long_paths_whole_off_a_terminal(repo):
    path, env = repo
    long_dir = "kernels/a_rather_long_kernel_directory_name_that_would_wrap"
    write_kernel(path, out_rel=long_dir)
    (path / "kernels" / "affine" / "kernel.cpp").write_text("// edited by hand\n")  # a failure with a fix line
    env = {k: v for k, v in env.items() if k != "COLUMNS"}
    env["PATH"] = f"{Path(kopt_cmd()[0]).parent}:{env['PATH']}"
    res = subprocess.run(kopt_cmd("check"), cwd=path, capture_output=True, text=True, env=env)
    assert res.returncode == 1
    assert any(long_dir in line for line in res.stdout.splitlines()), res.stdout  # not cut, not folded
    assert "git checkout -- kernels/affine" in res.stdout
