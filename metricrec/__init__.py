"""metricrec: Collaborative Metric Learning recommenders on PyTorch."""

__version__ = "0.1.0"

from .interactions import DataWarning, Features, Interactions  # noqa: E402
from .split import Split  # noqa: E402
from .config import CMLConfig  # noqa: E402
from .cml import CML  # noqa: E402

__all__ = ["CML", "CMLConfig", "DataWarning", "Features", "Interactions", "Split", "__version__"]
