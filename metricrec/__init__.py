"""metricrec: Collaborative Metric Learning recommenders on PyTorch."""

__version__ = "0.1.0"

from .data.interactions import DataWarning, Features, Interactions  # noqa: E402
from .data.splits import Split  # noqa: E402
from .models.cml import CML, CMLConfig  # noqa: E402

__all__ = ["CML", "CMLConfig", "DataWarning", "Features", "Interactions", "Split", "__version__"]
