"""Training methods as objects: each module holds one method's arguments dataclass and how it builds its Trainer
(:class:`~.base.Method`); :mod:`.factory` assembles the parts they share (InfoNCE engine, collator, trainer) and
:mod:`.runner` runs any of them as its recipe (``recipes/<name>.py``).

| name | module | what |
|---|---|---|
| ``lco`` | :mod:`.contrastive` | InfoNCE with gradient caching on (query, positive[, negatives]) rows (LCO) |
| ``simcse`` | :mod:`.simcse` | the SimCSE family, one registered variant each (unsup, sup, esimcse, debcse, whitened, ccp) |
| ``muco`` | :mod:`.muco` | MuCo: K pairs of one image packed into one conversation, an embedding per turn |
| ``distill`` | :mod:`.distill` | DSE: the student's pair cosines learn a teacher's scores |
| ``defsent`` | :mod:`.defsent` | DefSent+: definitions classified to frozen entry embeddings, in stages |
| ``grace`` | :mod:`.grace` | GRACE: rationales, mean-pooled, rewarded by contrastive similarity (TRL GRPO) |

The method option is dispatched here only: :func:`get_method` maps a name to its object (modules load on first use,
so that ``lco`` does not import TRL's GRPO).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    from .base import Method

#: name -> (module, class) of every registered method
METHODS: dict[str, tuple[str, str]] = {
    "lco": ("contrastive", "LCO"),
    "simcse": ("simcse", "SimCSE"),
    "muco": ("muco", "MuCo"),
    "distill": ("distill", "Distill"),
    "defsent": ("defsent", "DefSent"),
    "grace": ("grace", "Grace"),
}


def get_method(name: str) -> Method:
    """The method registered as ``name`` (:data:`METHODS`)."""
    if name not in METHODS:
        raise ConfigError(f"no training method {name!r}; choose one of {', '.join(METHODS)}.")
    module, cls = METHODS[name]
    return getattr(import_module(f"{__name__}.{module}"), cls)()


def __getattr__(name: str):  # modules load on first use: ``mmembed.train.methods.simcse`` after ``import mmembed``
    from ..._lazy import submodule

    return submodule(__name__, name)
