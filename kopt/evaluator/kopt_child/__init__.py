"""kopt's hermetic child package: the process a candidate (or the trusted reference, for timing) runs in.

It imports only the standard library, torch and itself (relative imports), and is started as the top-level
package `kopt_child` (its parent directory first on sys.path, `python -I`), never as kopt.evaluator.kopt_child,
so neither kopt/__init__ nor kopt/evaluator/__init__ is ever imported in a candidate's process: nothing of
kopt's own state is there to patch. kopt's parent process imports `protocol` from here to read the frames.
"""
