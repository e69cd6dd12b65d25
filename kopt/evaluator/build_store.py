"""kopt's build store: $KOPT_BUILD_DIR/v2/entries/<key>/, each entry installed by kopt's parent in one rename,
read-only, with a manifest of sha256s MAC'd by a key only kopt's process reads (.mac-key, mode 0600).

An entry found on disk is trusted only after `lookup` re-hashes every file against a manifest whose MAC
verifies; a child can neither write an entry (its sandbox binds the store read-only or not at all) nor forge
a manifest (it never sees the key).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

STORE_VERSION = "v2"  # today's build dirs (the old layout) are never read
MAX_SO_BYTES = 1 << 30
_NAME = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?")  # file names inside a store entry


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _uncurse(path: Path) -> None:
    """Make a read-only tree of kopt's writable again (so it can be removed)."""
    for root, _dirs, files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(root, 0o755)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o644, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
        return
    _uncurse(path)
    shutil.rmtree(path, ignore_errors=True)


class Store:
    """$KOPT_BUILD_DIR/v2: entries/<key>/ (read-only files + manifest.json), locks/, staging/, .mac-key."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("entries", "pch", "locks", "staging"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._secret = self._mac_key()

    def _mac_key(self) -> bytes:
        path = self.root / ".mac-key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
        except FileExistsError:
            pass
        data = path.read_bytes()
        if len(data) != 32:  # a half-written key: another process is writing it right now
            time.sleep(0.2)
            data = path.read_bytes()
        return data

    def _mac(self, doc: dict) -> str:
        body = json.dumps({k: v for k, v in doc.items() if k != "mac"}, sort_keys=True).encode()
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    @contextlib.contextmanager
    def locked(self, key: str):
        with open(self.root / "locks" / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def staging(self) -> Path:
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        return path

    def lookup(self, key: str, section: str = "entries") -> tuple[dict | None, str | None]:
        """(manifest, None) for a verified entry; (None, why) when one exists but fails; (None, None) if absent."""
        entry = self.root / section / key
        if not entry.exists() and not entry.is_symlink():
            return None, None
        try:
            if entry.is_symlink() or not entry.is_dir():
                raise ValueError("not a directory")
            doc = json.loads((entry / "manifest.json").read_text())
            if not isinstance(doc, dict) or doc.get("key") != key or not hmac.compare_digest(
                    str(doc.get("mac", "")), self._mac(doc)):
                raise ValueError("manifest not written by kopt")
            for name, digest in doc["files"].items():
                if not _NAME.fullmatch(name) or sha256_file(entry / name) != digest:
                    raise ValueError(f"{name} differs from its manifest")
            return doc, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return None, str(e)

    def discard(self, key: str, section: str = "entries") -> None:
        remove_tree(self.root / section / key)

    def install(self, key: str, name: str, built: Path, files: list[str], compile_only: bool,
                section: str = "entries") -> dict:
        """Copy `files` out of a finished staging dir into entries/<key>, read-only, in one rename."""
        tmp = self.root / "staging" / f"install-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o755)
        try:
            digests = {}
            for fname in files:
                src = built / fname
                if not _NAME.fullmatch(fname):
                    raise OSError(f"{fname}: not a name kopt writes")
                (tmp / fname).parent.mkdir(parents=True, exist_ok=True)
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SO_BYTES:
                    raise OSError(f"{fname} is not a regular file of a sane size")
                h = hashlib.sha256()
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fin, open(tmp / fname, "xb") as fout:
                    for block in iter(lambda: fin.read(1 << 20), b""):
                        h.update(block)
                        fout.write(block)
                digests[fname] = h.hexdigest()
                os.chmod(tmp / fname, 0o444)
            doc = {"version": STORE_VERSION, "key": key, "name": name, "files": digests,
                   "compile_only": compile_only}
            doc["mac"] = self._mac(doc)
            (tmp / "manifest.json").write_text(json.dumps(doc, sort_keys=True))
            os.chmod(tmp / "manifest.json", 0o444)
            final = self.root / section / key
            try:
                os.rename(tmp, final)
            except OSError:  # another process installed it first: use theirs if it verifies
                remove_tree(tmp)
                theirs, why = self.lookup(key, section)
                if theirs is None:
                    raise OSError(f"the store entry exists and fails verification ({why})") from None
                return theirs
            for sub in sorted({os.path.dirname(f) for f in files if "/" in f}):
                os.chmod(final / sub, 0o555)
            os.chmod(final, 0o555)
            return doc
        except BaseException:
            remove_tree(tmp)
            raise
