"""Losses: contrastive InfoNCE (with cross-process gathering), gradient caching, MuCo's multi-turn losses."""

from .contrastive import ContrastiveLoss, InfoNCELoss
from .gradcache import cached_embed
from .multiturn import AuxiliaryContrastiveLoss, MultiTurnContrastiveLoss

__all__ = ["AuxiliaryContrastiveLoss", "ContrastiveLoss", "InfoNCELoss", "MultiTurnContrastiveLoss", "cached_embed"]
