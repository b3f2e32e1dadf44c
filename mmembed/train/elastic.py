"""Recipe options for elastic (2D Matryoshka / Starbucks) training of any method's loss (stateful ones included)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..losses.base import EmbeddingLoss
from ..losses.elastic import LAYER_WEIGHTS, ElasticLoss
from .checks import NON_NEGATIVE, POSITIVE_INT, check_fields, list_of, one_of

ELASTIC = ("none", "starbucks", "2dmse")


@dataclass
class ElasticArguments:
    """``elastic: starbucks`` trains the method's loss at fixed (layers, dimensions) pairs too; ``2dmse`` at one
    random pair a step (:mod:`mmembed.losses.elastic`)."""

    elastic: str = field(default="none", metadata={"help": f"one of {', '.join(ELASTIC)}"})
    elastic_layers: list[int] | None = field(default=None, metadata={
        "help": "starbucks: layers of the pairs (default: n/6, 2n/6 ... n)"})
    elastic_dims: list[int] | None = field(default=None, metadata={
        "help": "starbucks: dimensions of the pairs, one per layer (default: D/24, D/12, D/6, D/3, 2D/3, D); "
                "2dmse: the widths drawn from (default 8, 16, 32 ... < D)"})
    elastic_layer_weight: str | None = field(default=None, metadata={
        "help": "constant (starbucks default) or inverse (1/layers, 2dmse default)"})
    elastic_kl_weight: float = field(default=1.0, metadata={"help": "weight of the KL alignment term"})
    elastic_kl_temperature: float = field(default=0.3, metadata={"help": "temperature of the KL term (0: off)"})

    def __post_init__(self) -> None:
        check_fields(self, {"elastic": one_of(*ELASTIC), "elastic_layers": list_of(POSITIVE_INT),
                            "elastic_dims": list_of(POSITIVE_INT), "elastic_layer_weight": one_of(*LAYER_WEIGHTS),
                            "elastic_kl_weight": NON_NEGATIVE, "elastic_kl_temperature": NON_NEGATIVE})
        if self.elastic == "starbucks" and (self.elastic_layers is None) != (self.elastic_dims is None):
            raise ConfigError("give elastic_layers and elastic_dims together (one dimension per layer), or neither.")
        if self.elastic_layers is not None and len(self.elastic_layers) != len(self.elastic_dims or []):
            raise ConfigError(f"{len(self.elastic_layers)} elastic_layers for {len(self.elastic_dims or [])} "
                              f"elastic_dims: give one dimension per layer.")


def make_elastic(loss: EmbeddingLoss, args: ElasticArguments, seed: int = 0) -> EmbeddingLoss | ElasticLoss:
    """The method's loss, wrapped to train at the elastic pairs too (``loss`` itself with ``elastic: none``)."""
    if args.elastic == "none":
        return loss
    if loss.mini_batch_size or loss.mini_batch_tokens:
        raise ConfigError("elastic training needs every layer's states of the whole batch at once: drop "
                          "mini_batch_size / mini_batch_tokens (gradient caching), or set elastic: none.")
    pairs = list(zip(args.elastic_layers, args.elastic_dims)) if args.elastic_layers else None
    random = args.elastic == "2dmse"
    return ElasticLoss(loss, pairs=None if random else pairs, mode="random" if random else "fixed",
                       dims=args.elastic_dims if random else None, layer_weight=args.elastic_layer_weight,
                       kl_weight=args.elastic_kl_weight, kl_temperature=args.elastic_kl_temperature, seed=seed)
