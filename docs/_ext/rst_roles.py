"""A griffe extension for the API reference: reST roles in docstrings become cross-references.

orchestrix docstrings use ``:class:`Name``` and ``Example::`` (they read well in ``help()``);
Markdown would print the role names literally. Once the whole package is loaded, each role's
target is resolved where the docstring stands (its class, its module, that module's imports),
the way Python would resolve the name there. A target the reference shows (public, documented,
in a module the reference pages render) becomes a link (an autorefs ``[text][path]``); any
other target (a private helper, a module left out) stays plain code, so no link is ever broken.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|exc|data|mod|obj):`(?P<body>[^`]+)`")
_TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>")
_LITERAL = re.compile(r"::$", re.M)
_REFERENCE_PAGES = Path(__file__).resolve().parent.parent / "reference"
_RENDERED = re.compile(r"^:::\s*(\S+)", re.M)


def rendered_modules() -> set[str]:
    """The modules the reference pages render (their ``::: module`` lines)."""
    return {m for page in _REFERENCE_PAGES.glob("*.md") for m in _RENDERED.findall(page.read_text())}


class RstRoles(griffe.Extension):
    """Rewrite reST roles (as links where the reference shows the target) and ``::`` markers."""

    def __init__(self) -> None:
        self._modules = rendered_modules()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the package, now that every name can be resolved."""
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _ROLE.sub(functools.partial(self._role, obj), obj.docstring.value)
                obj.docstring.value = _LITERAL.sub(":", text)

    def _role(self, obj: griffe.Object, role: re.Match[str]) -> str:
        return self._reference(obj, role["body"])

    def _reference(self, obj: griffe.Object, body: str) -> str:
        titled = _TITLED.fullmatch(body)
        if titled:
            title, target = titled["title"], titled["target"]
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        path = self._documented(obj, target)
        return f"`{title}`" if path is None else f"[`{title}`][{path}]"

    def _documented(self, obj: griffe.Object, target: str) -> str | None:
        """The full path of ``target`` seen from ``obj``, if the reference shows it; else None."""
        if target.startswith("."):
            return None  # a module's relative name for its private sibling modules
        first, _, rest = target.partition(".")
        try:
            path = obj.resolve(first)
        except griffe.NameResolutionError:
            path = first  # an absolute dotted name, such as orchestrix.cli
        found = _lookup(obj.modules_collection, f"{path}.{rest}" if rest else path)
        if found is None or not self._shown(found):
            return None
        return found.path

    def _shown(self, obj: griffe.Object) -> bool:
        """Whether the reference renders ``obj``: public and documented down from a page's module."""
        chain = []
        current: griffe.Object | None = obj
        while current is not None and current.path not in self._modules:
            chain.append(current)
            current = current.parent
        if current is None:
            return False
        return all(o.is_public and o.has_docstrings for o in chain)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found += _walk(member)  # type: ignore[arg-type]
    return found


def _lookup(modules: griffe.ModulesCollection, path: str) -> griffe.Object | None:
    """The object at ``path`` (an imported name followed to where it is defined), or None."""
    top, _, rest = path.partition(".")
    try:
        found: Any = modules[top]
        if rest:
            found = found[rest]
        while found.is_alias:
            found = found.final_target
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return found if isinstance(found, griffe.Object) else None
