"""One declaration per setting: every command takes every flag and kopt.toml key declared for it."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from kopt import settings as S
from kopt.cli import app
from kopt.config import settings_for
from kopt.errors import ConfigError


def valid(s: S.Setting):
    if s.choices:
        return s.choices[-1]
    if s.type is bool:
        return True
    if s.type is int:
        return int(max(s.min or 0, 2))
    if s.type is float:
        return float(max(s.min or 0.0, 1.5))
    return "x"


def command_options(name: str) -> set[str]:
    cmd = typer.main.get_command(app).commands[name]
    return {o for p in cmd.params for o in p.opts}


@pytest.mark.parametrize("command", [S.OPTIMIZE, S.COMPARE])
def test_every_declared_setting_is_a_flag_and_a_config_key(command, tmp_path):
    opts = command_options(command)
    declared = S.for_command(command)
    assert declared
    for s in declared:
        assert s.option in opts, f"kopt {command} lacks {s.option}"
        (tmp_path / "kopt.toml").write_text(f"{s.name.replace('_', '-')} = {valid(s)!r}\n".replace("'", '"')
                                            .replace("True", "true"))
        assert settings_for(command, {}, tmp_path)[s.name] == valid(s), s.name
    # A key meant only for the other command is ignored here, never "unknown".
    others = [s for s in S.SETTINGS if command not in s.commands]
    for s in others:
        (tmp_path / "kopt.toml").write_text(f"{s.name} = {valid(s)!r}\n".replace("'", '"').replace("True", "true"))
        assert s.name not in settings_for(command, {}, tmp_path)


def test_top_m_and_ttt_keys_in_kopt_toml_reach_compare(tmp_path):
    (tmp_path / "kopt.toml").write_text("top-m = 5\nttt_lr = 2e-3\nttt-steps = 1\nselect = 'oracle'\n")
    v = settings_for(S.COMPARE, {"top_m": None, "ttt_lr": 1e-4}, tmp_path)
    assert v["top_m"] == 5 and v["ttt_lr"] == 1e-4 and v["ttt_steps"] == 1 and v["k"] == 64
    assert settings_for(S.OPTIMIZE, {}, tmp_path)["select"] == "oracle"


def test_ranges_are_checked_once_for_flags_config_and_library_callers(tmp_path):
    with pytest.raises(ConfigError, match="--top-m must be at least 1"):
        settings_for(S.OPTIMIZE, {"top_m": 0}, tmp_path)
    (tmp_path / "kopt.toml").write_text("ttt_k = 1\n")
    with pytest.raises(ConfigError, match="--ttt-k must be at least 2"):
        settings_for(S.OPTIMIZE, {}, tmp_path)
    (tmp_path / "kopt.toml").write_text("kk = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        settings_for(S.COMPARE, {}, tmp_path)
    from kopt.pipeline import OptimizeOptions
    from kopt.pool import RunOptions
    from kopt.ttt import TTTOptions

    with pytest.raises(ConfigError, match="--baseline must be one of"):
        OptimizeOptions(baseline="fastest")
    with pytest.raises(ConfigError, match="--k must be at least 1"):
        RunOptions(k=0)
    with pytest.raises(ConfigError, match="--ttt-k"):
        TTTOptions(ttt_k=1)


def test_records_mirror_the_declared_defaults():
    from kopt.pipeline import OptimizeOptions
    from kopt.pool import RunOptions
    from kopt.samplers import SamplerParams
    from kopt.ttt import TTTOptions

    for cls in (RunOptions, OptimizeOptions, TTTOptions, SamplerParams):
        for f in dataclasses.fields(cls):
            if f.name in S.BY_NAME and f.default is not dataclasses.MISSING:
                assert f.default == S.default(f.name), (cls.__name__, f.name)


def test_a_bad_flag_value_is_refused_before_any_work(tmp_path):
    res = CliRunner().invoke(app, ["optimize", str(tmp_path / "missing.py"), "--top-m", "0"])
    assert isinstance(res.exception, ConfigError) and "--top-m must be at least 1" in str(res.exception)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "missing.py"), "--baseline", "fastest"])
    assert isinstance(res.exception, ConfigError) and "eager, compile, best" in str(res.exception)
