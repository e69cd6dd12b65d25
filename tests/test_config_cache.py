"""Configuration files and the cache's integrity rules."""

from __future__ import annotations

import pytest

from kopt.cache import Cache, key_of
from kopt.config import load_config, resolve
from kopt.errors import ConfigError


def test_config_precedence(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.kopt]\nk = 8\ntarget = 'cpu'\n")
    (tmp_path / "kopt.toml").write_text("k = 32\nbase-url = 'http://127.0.0.1:8000/v1'\n")
    cfg = load_config(tmp_path)
    assert cfg == {"k": 32, "target": "cpu", "base_url": "http://127.0.0.1:8000/v1"}
    merged = resolve({"k": 4, "target": None}, cfg, {"k": 16, "target": "auto", "base_url": None, "seed": 0})
    assert merged == {"k": 4, "target": "cpu", "base_url": "http://127.0.0.1:8000/v1", "seed": 0}


def test_config_rejects_typos_and_bad_toml(tmp_path):
    (tmp_path / "kopt.toml").write_text("kk = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({}, load_config(tmp_path), {"k": 16})
    (tmp_path / "kopt.toml").write_text("k = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_cache_roundtrip_counts_and_corruption(tmp_path):
    with Cache(tmp_path / "c") as cache:
        parts = {"code": "abc", "task": "t"}
        assert cache.get("check", parts) is None
        cache.set("check", parts, {"status": "correct"})
        assert cache.get("check", parts) == {"status": "correct"}
        assert cache.hits["check"] == 1 and cache.misses["check"] == 1
        # A corrupt entry (payload does not match its checksum) is dropped and recomputed, never trusted.
        store = cache._store
        key = key_of("check", parts)
        store.set(key, store.get(key).replace("correct", "incorrect"))
        assert cache.get("check", parts) is None
        assert cache.corrupt["check"] == 1
        assert store.get(key) is None
        store.set(key, "not json")
        assert cache.get("check", parts) is None
        cache.save_run_stats("optimize x")
        info = cache.info()
        assert info["last_run"]["command"] == "optimize x"


def test_disabled_cache_stores_nothing(tmp_path):
    with Cache(tmp_path / "c", enabled=False) as cache:
        cache.set("sample", {"i": 0}, {"text": "x"})
        assert cache.get("sample", {"i": 0}) is None
