"""Losses: contrastive InfoNCE (with cross-process gathering) and gradient caching."""

from .contrastive import ContrastiveLoss, InfoNCELoss
from .gradcache import cached_embed

__all__ = ["ContrastiveLoss", "InfoNCELoss", "cached_embed"]
