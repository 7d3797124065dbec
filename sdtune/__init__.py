"""sdtune: fine-tune text-to-image diffusion models, from a tiny CPU model to SD 1.5 and SDXL.

    import sdtune
    pipe = sdtune.load_pipeline("tiny")            # or a hub id / folder of SD 1.x, 2.x, SDXL
    images = sdtune.sample(pipe, "a red circle on a white background")
    judge = sdtune.load_judge()                    # names shape, colour, background, style
"""

import logging


class _QuietTorchvisionFallback(logging.Filter):
    """transformers warns that image processors fall back to PIL without torchvision; sdtune needs no torchvision."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_QuietTorchvisionFallback())

from .data import toyworld  # noqa: E402
from .evaluation.judge import load_judge  # noqa: E402
from .formats import load_adapter  # noqa: E402
from .models.loading import load_pipeline  # noqa: E402
from .sampling import image_grid, sample  # noqa: E402

__version__ = "0.1.0"
__all__ = ["image_grid", "load_adapter", "load_judge", "load_pipeline", "sample", "toyworld"]
