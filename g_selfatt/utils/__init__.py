"""Small helpers of the original ``g_selfatt.utils``: parameter counts, normalisation, the warm-up schedule."""

from g_selfatt.utils import schedulers
from g_selfatt.utils.schedulers import linear_warmup_cosine_lr_scheduler, warmup_cosine_factor
from g_selfatt.utils.utils import normalize_tensor, normalize_tensor_one_minone, num_params

__all__ = ["linear_warmup_cosine_lr_scheduler", "normalize_tensor", "normalize_tensor_one_minone", "num_params",
           "schedulers", "warmup_cosine_factor"]
