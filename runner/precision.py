"""Mixed precision: the torch dtype of each ``config.amp`` value ("none" runs in float32)."""

from __future__ import annotations

from typing import Dict

import torch

AMP_DTYPES: Dict[str, torch.dtype] = {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
