"""Client methods show the operation's arguments and what the call returns (for
``help()`` and a notebook's completions), not the operation's generator type."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_PREFIX = "Operation["


def returning(method: F, op: Callable[..., Any]) -> F:
    """``method`` with ``op``'s signature, its return annotation unwrapped from
    ``Operation[...]`` (annotations are strings here: ``from __future__ import annotations``)."""
    signature = inspect.signature(op)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith(_PREFIX):
        signature = signature.replace(return_annotation=returns[len(_PREFIX) : -1])
    setattr(method, "__signature__", signature)  # noqa: B010 - functions have no such slot
    return method
