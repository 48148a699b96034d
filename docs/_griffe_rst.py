"""A Griffe extension for the API reference: asyncpoll's docstrings as Markdown.

asyncpoll's docstrings are prose written for Sphinx-style readers: roles such as
:class:`Session` or :meth:`Poller.wait`, ``double backticks`` and ``::`` literal blocks.
mkdocstrings renders docstrings as Markdown, so this extension rewrites them once the
package is loaded, without changing the source:

- a role naming a documented asyncpoll object becomes a cross-reference
  (``[`Session`][asyncpoll.Session]``); any other target (``ValueError``,
  ``time.monotonic``, a private constant) becomes inline code, so that
  ``mkdocs build --strict`` never meets a reference it cannot resolve;
- ``text::`` followed by an indented block becomes ``text:`` and a fenced Python block;
- an ``@attrs.frozen`` or ``@attrs.define`` class gets the ``__init__`` attrs generates
  (static analysis cannot see it), so its signature shows its fields;
- a default that names a module constant (``DEFAULT_BASE_URL``) shows the constant's value.

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|obj|mod|const):`(~?)([^`]+)`")
_PACKAGES = ("asyncpoll", "asyncpoll.testing")


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of the ``asyncpoll`` package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "asyncpoll":
            return
        for obj in list(_walk(pkg)):
            if isinstance(obj, griffe.Class) and "__init__" not in obj.members and _is_attrs(obj):
                _add_attrs_init(obj)
        for obj in _walk(pkg):
            if isinstance(obj, griffe.Function):
                _inline_constants(obj, pkg)
        documented = _documented(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                scope = obj.path if obj.is_class else obj.parent.path if obj.parent else ""
                text = _literal_blocks(obj.docstring.value)
                rewrite = partial(_role, scope=scope, documented=documented)
                obj.docstring.value = _ROLE.sub(rewrite, text)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every member defined under it (imported names are skipped)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _walk(member)


def _resolve(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


_ATTRS_DECORATORS = {"attrs.frozen", "attrs.define", "attrs.mutable"}


def _is_attrs(cls: griffe.Class) -> bool:
    return any(
        isinstance(d.value, griffe.Expr) and d.value.canonical_path in _ATTRS_DECORATORS
        for d in cls.decorators
    )


def _add_attrs_init(cls: griffe.Class) -> None:
    """The ``__init__`` attrs generates: one parameter per annotated field, in order."""
    parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for member in cls.members.values():
        if not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        if "property" in member.labels:
            continue
        value = member.value
        default: str | griffe.Expr | None = value
        if isinstance(value, griffe.ExprCall) and value.canonical_path == "attrs.field":
            arguments = {
                a.name: a.value for a in value.arguments if isinstance(a, griffe.ExprKeyword)
            }
            factory = arguments.get("factory")
            if isinstance(factory, griffe.Expr):
                default = griffe.ExprCall(function=factory, arguments=[])
            else:
                default = arguments.get("default")
        parameters.append(
            griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=default,
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


def _inline_constants(func: griffe.Function, pkg: griffe.Module) -> None:
    for parameter in func.parameters:
        default = parameter.default
        if not isinstance(default, griffe.ExprName) or not default.name.isupper():
            continue
        path = default.canonical_path
        if not path.startswith("asyncpoll."):
            continue
        try:
            constant = _resolve(pkg.get_member(path.split(".", 1)[1]))
        except (KeyError, griffe.AliasResolutionError):
            continue
        if isinstance(constant, griffe.Attribute) and constant.value is not None:
            parameter.default = constant.value


def _documented(pkg: griffe.Module) -> dict[str, str]:
    """Known path -> public path, for every name the reference renders, and for those of
    its members that have a docstring (each gets a heading, hence an anchor)."""
    paths: dict[str, str] = {}
    for package in _PACKAGES:
        module = pkg if package == "asyncpoll" else _resolve(pkg.get_member("testing"))
        if not isinstance(module, griffe.Module):
            continue
        for name in module.exports or ():
            public = f"{package}.{name}"
            target = _resolve(module.get_member(str(name)))
            paths[public] = paths[target.path] = public
            for member_name, member in target.members.items():
                if not member_name.startswith("_") and _resolve(member).docstring is not None:
                    member_path = f"{public}.{member_name}"
                    paths[member_path] = paths[f"{target.path}.{member_name}"] = member_path
    return paths


def _role(match: re.Match[str], *, scope: str, documented: dict[str, str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    target = target.removesuffix("()")
    title = target.rsplit(".", 1)[-1] if short else target
    candidates = [target]
    if scope:
        candidates.insert(0, f"{scope}.{target}")
    candidates += [f"{package}.{target}" for package in _PACKAGES]
    for candidate in candidates:
        if candidate in documented:
            return f"[`{title}`][{documented[candidate]}]"
    return f"`{title}`"


def _literal_blocks(text: str) -> str:
    """``para::`` + indented block -> ``para:`` + fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.rstrip().endswith("::"):
            out.append(line)
            index += 1
            continue
        base = len(line) - len(line.lstrip())
        stripped = line.rstrip()[:-2].rstrip()
        block: list[str] = []
        end = index + 1
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > base
        ):
            block.append(lines[end])
            end += 1
        while block and not block[-1].strip():
            block.pop()
        while block and not block[0].strip():
            block.pop(0)
        if not any(b.strip() for b in block):
            out.append(line)
            index += 1
            continue
        if stripped:
            out.append(stripped if stripped.endswith(":") else stripped + ":")
        indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        pad = " " * base
        out += ["", pad + "```python"]
        out += [pad + b[indent:] if b.strip() else "" for b in block]
        out += [pad + "```", ""]
        index = end
    return "\n".join(out).replace("\n\n\n", "\n\n")
