"""laserlm: LAyer-SElective Rank reduction (LASER) for Hugging Face transformers and any torch module."""

from ._version import __version__
from .api import search
from .core.edits import Edit, apply_edits, edited, parse_edit, plan, resolve_edits
from .core.layout import Layout, Target, get_layout
from .core.methods import METHODS, register_method
from .core.ranks import rank_for
from .core.svd import SVDCache, default_cache
from .errors import UserError
from .evaluation.calibration import calibrate
from .models.loading import Loaded, load_model
from .sweep.objective import Objective
from .sweep.sweeper import PAPER_RHOS

__all__ = [
    "Edit", "Layout", "Loaded", "METHODS", "Objective", "PAPER_RHOS", "SVDCache", "Target", "UserError",
    "__version__", "apply_edits", "calibrate", "default_cache", "edited", "get_layout", "load_model", "parse_edit", "plan",
    "rank_for", "register_method", "resolve_edits", "search",
]
