"""Attention methods for vision transformers: attention rollout and gradient rollout.

:mod:`~flashtorch.attention.capture` records the attention probabilities (and, through them,
their gradients) whatever computes them; :mod:`~flashtorch.attention.rollout` holds both
methods, registered in :data:`flashtorch.METHODS` as ``attention_rollout`` and
``gradient_rollout``.
"""

from __future__ import annotations

from .capture import AttentionCapture, AttentionRecord, explicit_sdpa
from .rollout import (
    AttentionRollout,
    GradientRollout,
    RolloutMethod,
    attention_rollout_row,
    gradient_rollout_row,
)

__all__ = [
    "AttentionCapture",
    "AttentionRecord",
    "AttentionRollout",
    "GradientRollout",
    "RolloutMethod",
    "attention_rollout_row",
    "explicit_sdpa",
    "gradient_rollout_row",
]
