"""Entry of the hermetic child: `kopt_child run` serves one session over the protocol (stdin/stdout).

The protocol's fds are duplicated first and the originals repointed (stdin to /dev/null, stdout to stderr),
so whatever the candidate prints lands on stderr (drained and capped by the parent), never in a frame.
Other modes (`capture`, `compile`) belong to the build stage's modules when they are present.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = argv[0] if argv else "run"
    if mode == "run":
        proto_in, proto_out = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        from .harness import serve

        try:
            serve(proto_in, proto_out)
        finally:
            sys.stderr.flush()
        os._exit(0)  # no atexit handlers or finalisers of the candidate's after the session
    if mode in ("capture", "compile"):
        import importlib

        entry = importlib.import_module(f".{mode}", __package__)
        sys.exit(entry.main(argv[1:]))
    sys.stderr.write(f"kopt_child: unknown mode {mode!r}\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
