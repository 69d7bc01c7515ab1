"""Model families as plug-ins: one folder per family, each exporting ``FAMILY`` (a
:class:`~hitmodels.families.base.Family`).

Families are found, not listed: every sub-package of this package is one (``hitmusicnet``, ``lasso``,
``hgb``, ...), and an installed distribution can add more under the ``hitmusic.families`` entry-point
group. A family is imported only when it is asked for, so a stage that scores with a tree model does not
import torch. Stages ask for families by the name a bundle or a command line gives them, never by importing
one.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from .base import Family, Fitted

__all__ = ["Family", "Fitted", "get", "names"]

ENTRY_POINT_GROUP = "hitmusic.families"


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every family this installation has, sorted."""
    # a folder's name with hyphens for underscores: siamese_hitmusicnet/ is the siamese-hitmusicnet family
    own = [m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if m.ispkg]
    return sorted(set(own) | set(_plugins()))


@cache
def get(name: str) -> Family:
    """The family called ``name``; ``ValueError`` naming the known ones when there is none."""
    if name not in names():
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(names())}")
    plugin = _plugins().get(name)
    family = plugin.load() if plugin is not None else importlib.import_module(f"{__name__}.{name.replace('-', '_')}").FAMILY
    if not isinstance(family, Family) or family.name != name:
        raise TypeError(f"family plug-in {name!r} does not provide a Family named {name!r}")
    return family
