"""Losses: the base embedding loss (the Embedder, its cached embedding of columns, content keys, state across passes),
contrastive InfoNCE (with cross-process gathering), gradient caching, MuCo's multi-turn losses, the sentence-embedding
methods' objectives (distillation, DefSent+ entry classification, SimCTG) and the elastic wrapper of any of them."""

from .base import EmbeddingLoss
from .contrastive import ContrastiveLoss, InfoNCEInputs, InfoNCELoss
from .defsent import EntryClassificationLoss
from .distill import DistillationLoss
from .elastic import ElasticLoss
from .gradcache import cached_embed
from .multiturn import AuxiliaryContrastiveLoss, MultiTurnContrastiveLoss
from .simctg import SimCTGLoss, isotropy, token_contrastive_loss

__all__ = ["AuxiliaryContrastiveLoss", "ContrastiveLoss", "DistillationLoss", "ElasticLoss", "EmbeddingLoss",
           "EntryClassificationLoss", "InfoNCEInputs", "InfoNCELoss", "MultiTurnContrastiveLoss", "SimCTGLoss",
           "cached_embed", "isotropy", "token_contrastive_loss"]


def __getattr__(name: str):  # submodules load on first use: ``mmembed.losses.<module>`` after ``import mmembed``
    from .._lazy import submodule

    return submodule(__name__, name)
