"""laserlm: LAyer-SElective Rank reduction (LASER) for Hugging Face transformers."""

__version__ = "0.1.0"

from .arch import Layout, Target, get_layout  # noqa: E402
from .edits import Edit, apply_edits, edited, parse_edit, plan, resolve_edits  # noqa: E402
from .errors import UserError  # noqa: E402
from .methods import METHODS, register_method, rank_for  # noqa: E402
from .models import Loaded, load_model  # noqa: E402
from .svd import SVDCache, default_cache  # noqa: E402

__all__ = [
    "Edit", "Layout", "Loaded", "METHODS", "SVDCache", "Target", "UserError", "apply_edits",
    "default_cache", "edited", "get_layout", "load_model", "parse_edit", "plan", "rank_for",
    "register_method", "resolve_edits",
]
