"""A griffe extension for the API reference: show reST roles in docstrings as code.

orchestrix docstrings use ``:class:`Name``` and ``Example::`` (they read well in ``help()``);
Markdown would print the role names literally, so this turns them into plain inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|exc|data|mod|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"::$", re.M)


class RstRoles(griffe.Extension):
    """Rewrite reST roles and ``::`` literal markers in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of one object as it is loaded."""
        if obj.docstring is not None:
            text = _ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(":", text)
