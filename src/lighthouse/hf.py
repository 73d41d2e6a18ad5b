"""Short alias of `lighthouse.integrations.hf`: `import lighthouse.hf` registers attn_implementation="lighthouse"."""

from .integrations.hf import *  # noqa: F403
from .integrations.hf import __all__  # noqa: F401
