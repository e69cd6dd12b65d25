"""What the static gate knows about names in a candidate's Python: which local names, attributes and
expressions may hold a module (through aliases and containers: `m = [torch][0]`, `getattr(torch, "cuda")`,
`self.t = torch`), so a write through an alias the rules do not list by name is still seen as a write to
that module. Plus the small AST queries the gate asks of a whole tree.
"""

from __future__ import annotations

import ast

from kopt.evaluator.static_rules import MODULE_LEAVES


class ModuleScope:
    """Mixed into the gate's visitor: it fills `aliases`, `modules`, `mod_names`, `mod_attrs`, `rejections`
    and `warnings`; these helpers read them."""

    aliases: dict[str, str]
    modules: set[str]
    mod_names: dict[str, str]
    mod_attrs: dict[str, str]
    rejections: list[str]
    warnings: list[str]

    def reject(self, node: ast.AST | None, msg: str) -> None:
        where = f"line {node.lineno}: " if node is not None and hasattr(node, "lineno") else ""
        text = where + msg
        if text not in self.rejections:
            self.rejections.append(text)

    def warn(self, node: ast.AST | None, msg: str) -> None:
        where = f"line {node.lineno}: " if node is not None and hasattr(node, "lineno") else ""
        text = where + msg
        if text not in self.warnings:
            self.warnings.append(text)

    def qualname(self, node: ast.AST) -> str | None:
        """The fully qualified dotted name of a Name/Attribute chain rooted at an import, else None."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def module_valued(self, node: ast.AST) -> str | None:
        """The module (or module attribute) this expression may evaluate to, through aliases and containers
        (`m = [torch][0]`, `getattr(torch, "cuda")`), else None. A call's result is a value, not a module."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id) or self.mod_names.get(node.id)
        if isinstance(node, ast.Attribute):
            qn = self.qualname(node)
            if qn:
                return qn
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.mod_attrs:
                return self.mod_attrs[node.attr]
            base = self.module_valued(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
                base = self.module_valued(node.args[0])
                return f"{base}.<attr>" if base else None
            return None
        if isinstance(node, (ast.Lambda, ast.FunctionDef)):
            return None
        for child in ast.iter_child_nodes(node):  # [torch][0], (x, torch)[1], torch if c else os
            found = self.module_valued(child)
            if found:
                return found
        return None

    def bare_module(self, node: ast.AST) -> str | None:
        """A module object itself (`torch`, `torch.cuda`, `m` after `m = [torch][0]`), not a value from one
        (`torch.float32` and `F.relu` are passed to calls all the time)."""
        if not isinstance(node, (ast.Name, ast.Attribute)):
            return None
        qn = self.module_valued(node)
        imported = {self.aliases[m] for m in self.modules}
        if qn and (qn in imported or qn.split(".")[-1] in MODULE_LEAVES):
            return qn
        return None

    def bind(self, target: ast.AST, value: ast.AST) -> None:
        """Track names and self attributes that may hold a module (aliasing past the qualified-name rules)."""
        mod = self.module_valued(value)
        for t in ast.walk(target) if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            if isinstance(t, ast.Name):
                if mod:
                    self.mod_names[t.id] = mod
                else:
                    self.mod_names.pop(t.id, None)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                if mod:
                    self.mod_attrs[t.attr] = mod
                else:
                    self.mod_attrs.pop(t.attr, None)


def is_import_guard(node: ast.AST) -> bool:
    """`try: import x / except ImportError: x = None`: an optional import, not a fallback around the kernel
    (a later `if x is None: torch...` is what the runtime library-compute check sees)."""
    simple = (ast.Import, ast.ImportFrom, ast.Pass, ast.Assign, ast.AnnAssign, ast.Expr)
    def plain(s: ast.stmt) -> bool:  # an import, or `HAVE_X = True`
        return isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass)) or (
            isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant))

    if not node.body or not all(plain(s) for s in node.body):
        return False
    if not any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body) or getattr(node, "finalbody", None):
        return False
    for h in node.handlers:
        names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if not names or not all(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                for n in names):
            return False
        if not all(isinstance(s, simple) for s in h.body):
            return False
    return all(isinstance(s, simple) for s in node.orelse)


def string_constants(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def attr_used(tree: ast.AST, attr: str) -> bool:
    """`self._ext = load_inline(...)` then `self._ext.relu(x)`: an attribute read of that name."""
    return any(isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.ctx, ast.Load)
               for n in ast.walk(tree))
