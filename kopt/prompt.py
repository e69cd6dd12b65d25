"""The prompt stage: render a KernelBench-style one-shot prompt, and pull ModelNew back out of a reply.

Templates are data (templates/prompt_cpu.txt, prompt_cuda.txt), `string.Template` text with two placeholders,
`$reference_source` and `$task_name` (C++ braces stay literal; a literal dollar is `$$`). A template may split
into a system and a user message with lines that read exactly `[system]` and `[user]`; without them the whole
file is the user message. The wording follows KernelBench's `one_shot` prompt (`src/kernelbench/prompts/prompts.toml`).

Extraction differs from KernelBench on purpose: KernelBench takes the *first* fenced block, so a draft earlier
in the answer wins and tags like `py` become code; we take the *last* ```python / ```py / untagged block that
defines `ModelNew` (KernelBench's `extract_first_code`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import string
import tokenize
from dataclasses import dataclass
from pathlib import Path

from kopt.errors import KoptError
from kopt.task import Task

PLACEHOLDERS = ("reference_source", "task_name")

_SYSTEM_MARK = "[system]"
_USER_MARK = "[user]"

# A fence opens at the start of a line with ``` and an optional tag, and closes at a line that is just ```.
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_PY_TAGS = ("", "python", "py", "python3")
_MODELNEW_RE = re.compile(r"^\s*class\s+ModelNew\b", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt. `hash` keys the sample cache, so it covers exactly what the model sees.

    `turns` are the conversation after the first user message, as (role, text) pairs alternating
    "assistant" (an earlier answer) and "user" (kopt's feedback on it): a follow-up turn (kopt/refine.py).
    """

    system: str | None
    user: str
    target: str  # a target name (kopt.evaluator.targets)
    hash: str
    turns: tuple[tuple[str, str], ...] = ()

    def as_text(self) -> str:
        """For base models (no chat template): the system text, a blank line, then the user text; each later
        turn follows after a blank line as it is, so a follow-up reads as the document it continues."""
        parts = ([self.system] if self.system else []) + [self.user] + [text for _, text in self.turns]
        return "\n\n".join(parts) + ("\n\n" if self.turns else "")

    def as_messages(self) -> list[dict]:
        """For chat models: OpenAI-style messages."""
        msgs: list[dict] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": self.user})
        msgs.extend({"role": role, "content": text} for role, text in self.turns)
        return msgs

    def follow_up(self, answer: str, feedback: str) -> Prompt:
        """This conversation, then the model's `answer` and kopt's `feedback` on it (the next user turn)."""
        turns = self.turns + (("assistant", answer), ("user", feedback))
        return Prompt(system=self.system, user=self.user, target=self.target, turns=turns,
                      hash=prompt_hash(self.system, self.user, turns))


def prompt_hash(system: str | None, user: str, turns: tuple[tuple[str, str], ...] = ()) -> str:
    # JSON keeps (None, "a") and ("", "a") and a system/user split at different places apart; a first-turn
    # prompt hashes as it always has, so its cached samples stay valid.
    parts: list = [system, user] + ([[list(t) for t in turns]] if turns else [])
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def make_prompt(system: str | None, user: str, target: str) -> Prompt:
    return Prompt(system=system, user=user, target=target, hash=prompt_hash(system, user))


def _split_sections(text: str) -> tuple[str | None, str]:
    lines = text.splitlines()
    stripped = [ln.strip() for ln in lines]
    if _USER_MARK not in stripped:
        return None, text.strip("\n")
    u = stripped.index(_USER_MARK)
    user = "\n".join(lines[u + 1 :]).strip("\n")
    system = None
    if _SYSTEM_MARK in stripped[:u]:
        s = stripped.index(_SYSTEM_MARK)
        system = "\n".join(lines[s + 1 : u]).strip("\n") or None
    return system, user


def _render(template_text: str, origin: str, values: dict[str, str]) -> str:
    tmpl = string.Template(template_text)
    try:
        return tmpl.substitute(values)
    except KeyError as e:
        raise KoptError(
            f"prompt template {origin} uses an unknown placeholder ${e.args[0]}",
            f"use only {', '.join('$' + p for p in PLACEHOLDERS)}; write a literal dollar as $$",
        ) from None
    except ValueError as e:  # a lone "$" or "${" that is not a placeholder
        raise KoptError(
            f"prompt template {origin} has a bad placeholder ({e})",
            f"use only {', '.join('$' + p for p in PLACEHOLDERS)}; write a literal dollar as $$",
        ) from None


def build_prompt(task: Task, target: str, template: Path | None = None) -> Prompt:
    """The one-shot prompt for `task` on `target` (its template is the target's PROMPT_TEMPLATE), or from a
    user's template file."""
    from kopt.evaluator.targets import get_target

    name = get_target(target).PROMPT_TEMPLATE  # an unknown target is refused here
    if template is None:
        from kopt.resources import read_template

        text, origin = read_template(name), name
    else:
        path = Path(template)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise KoptError(f"cannot read prompt template {path}: {e.strerror or e}",
                            "pass an existing text file to --prompt-template") from None
        origin = str(path)
    rendered = _render(text, origin, {"reference_source": task.source.strip("\n"), "task_name": task.name})
    system, user = _split_sections(rendered)
    return make_prompt(system, user, target)


def extract_code(text: str) -> str | None:
    """The last fenced ```python / ```py / untagged block that defines `class ModelNew`, or None."""
    found = None
    for m in _FENCE_RE.finditer(text):
        if m.group(1).lower() not in _PY_TAGS:
            continue
        body = m.group(2)
        if _MODELNEW_RE.search(body):
            found = body
    if found is None:
        return None
    return found.strip("\n") + "\n"


def normalize_code(code: str) -> str:
    """A dedupe key: the same for two sources that differ only in comments, blank lines and spacing.

    Python tokens are re-joined with single spaces, one logical line per line, indented by nesting depth;
    string literals (which hold the C++/CUDA source) are kept byte for byte. Code that does not tokenize
    falls back to stripping each line and dropping blank ones.
    """
    out: list[str] = []
    line: list[str] = []
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.NEWLINE:
                if line:
                    out.append("  " * depth + " ".join(line))
                line = []
            else:
                line.append(tok.string)
        if line:
            out.append("  " * depth + " ".join(line))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(" ".join(ln.split()) for ln in code.splitlines() if ln.strip())
    return "\n".join(out)
