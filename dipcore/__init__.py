"""dipcore: the Deep Image Prior (Ulyanov, Vedaldi, Lempitsky, CVPR 2018) as a small, pure torch library.

>>> import dipcore
>>> obs = dipcore.degrade(clean, task="sr", scale=4, seed=0)                      # doctest: +SKIP
>>> res = dipcore.restore(obs, task="sr", scale=4, seed=0, reference=clean)       # doctest: +SKIP
"""

from .api import Restoration, RunOutput, StoppingChoice, restore, restore_batch
from .degrade import Observation, degrade
from .errors import ConfigError, DipcoreError, ImageDecodeError, ImageTooLargeError, OutOfMemoryError
from .fit import EngineOptions, StepRecord
from .imageio import decode_image, encode_png, load_image, to_float_image
from .memory import estimate_peak_bytes
from .metrics import PsnrProtocol, psnr, ssim
from .tasks import TASKS, get_preset

__all__ = [
    "restore", "restore_batch", "Restoration", "RunOutput", "StoppingChoice", "degrade", "Observation", "psnr",
    "ssim", "PsnrProtocol",
    "decode_image", "encode_png", "load_image", "to_float_image",
    "EngineOptions", "StepRecord", "TASKS", "get_preset", "estimate_peak_bytes",
    "DipcoreError", "ConfigError", "ImageDecodeError", "ImageTooLargeError", "OutOfMemoryError",
]  # fmt: skip
