"""laserlm: LAyer-SElective Rank reduction (LASER) for Hugging Face transformers."""

from ._version import __version__
from .core.edits import Edit, apply_edits, edited, parse_edit, plan, resolve_edits
from .core.layout import Layout, Target, get_layout
from .core.methods import METHODS, rank_for, register_method
from .core.svd import SVDCache, default_cache
from .errors import UserError
from .models.loading import Loaded, load_model

__all__ = [
    "Edit", "Layout", "Loaded", "METHODS", "SVDCache", "Target", "UserError", "__version__", "apply_edits",
    "default_cache", "edited", "get_layout", "load_model", "parse_edit", "plan", "rank_for",
    "register_method", "resolve_edits",
]
