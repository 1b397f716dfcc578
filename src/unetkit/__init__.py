"""unetkit: train, evaluate and deploy U-Net-family models for 2D semantic segmentation."""

from unetkit.models import build_model, list_models
from unetkit.tasks import IGNORE_INDEX, Task

__version__ = "0.1.0"
__all__ = ["IGNORE_INDEX", "Task", "__version__", "build_model", "list_models"]
