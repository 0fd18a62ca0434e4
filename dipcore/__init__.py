"""dipcore: the Deep Image Prior (Ulyanov, Vedaldi, Lempitsky, CVPR 2018) as a small, pure torch library.

>>> import dipcore
>>> obs = dipcore.degrade(clean, task="sr", scale=4, seed=0)                      # doctest: +SKIP
>>> res = dipcore.restore(obs, task="sr", scale=4, seed=0, reference=clean)       # doctest: +SKIP
"""

from .api import Restoration, RunOutput, StoppingChoice, restore, restore_batch
from .batched import batch_refusal
from .canvas import canvas_bucket
from .crop import center_crop, center_crop_to_multiple
from .degrade import degrade
from .engine import EngineOptions
from .errors import ConfigError, DipcoreError, ImageDecodeError, ImageTooLargeError, OutOfMemoryError
from .fit import StepRecord
from .imagefile import DecodedImage, EncodedImage, ImageInfo, decode_with_info, encode_like, format_for_path
from .imageio import decode_image, encode_png, image_shape, load_image, to_float_image
from .memory import estimate_peak_bytes
from .metrics import PsnrProtocol, psnr, ssim
from .observation import Observation
from .task_defs import Task, get_task
from .tasks import TASKS, get_preset, preset_for

__all__ = [
    "TASKS",
    "ConfigError",
    "DecodedImage",
    "DipcoreError",
    "EncodedImage",
    "EngineOptions",
    "ImageDecodeError",
    "ImageInfo",
    "ImageTooLargeError",
    "Observation",
    "OutOfMemoryError",
    "PsnrProtocol",
    "Restoration",
    "RunOutput",
    "StepRecord",
    "StoppingChoice",
    "Task",
    "batch_refusal",
    "canvas_bucket",
    "center_crop",
    "center_crop_to_multiple",
    "decode_image",
    "decode_with_info",
    "degrade",
    "encode_like",
    "encode_png",
    "estimate_peak_bytes",
    "format_for_path",
    "get_preset",
    "get_task",
    "image_shape",
    "load_image",
    "preset_for",
    "psnr",
    "restore",
    "restore_batch",
    "ssim",
    "to_float_image",
]
