"""laserlm: LAyer-SElective Rank reduction (LASER) for Hugging Face transformers and any torch module."""

import sys
import types

from ._version import __version__
from .core.edits import Edit, apply_edits, edited, parse_edit, plan, resolve_edits
from .core.layout import Layout, Target, get_layout
from .core.methods import METHODS, rank_for, register_method
from .core.svd import SVDCache, default_cache
from .errors import UserError
from .models.loading import Loaded, load_model
from .search.objective import Objective
from . import api as _api
from . import search as _search_package


class _CallableSearch(types.ModuleType):
    """`laserlm.search(model, objective, ...)` is the search API, and `laserlm.search.job` etc. stay the
    package's modules: binding the function to the name would hide the subpackage from `import a.b as c`."""

    def __call__(self, *args, **kwargs):
        return _api.search(*args, **kwargs)


_search_package.__class__ = _CallableSearch
_search_package.__call__.__func__.__doc__ = _api.search.__doc__
search = sys.modules[__name__ + ".search"]

__all__ = [
    "Edit", "Layout", "Loaded", "METHODS", "Objective", "SVDCache", "Target", "UserError", "__version__",
    "apply_edits", "default_cache", "edited", "get_layout", "load_model", "parse_edit", "plan", "rank_for",
    "register_method", "resolve_edits", "search",
]
