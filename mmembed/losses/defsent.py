"""DefSent+ (Liu, arXiv 2405.16153): classify each dictionary definition to its entry against frozen entry
embeddings (``sentence_methods.md`` §8).

* :func:`entry_embeddings`: ``E_e = mean_j pool(Enc(d_j))`` over the definitions of entry ``e``, encoded by the
  previous stage's encoder with the model's own template and pooler (the paper's "AC" / "AMP": averages of raw pooled
  vectors, not normalised; ``normalize=True`` averages unit vectors instead).
* :func:`ica_transform`: the optional isotropy step of the paper's ``ICA-transform.py``: standardise each
  dimension, FastICA (``whiten="unit-variance"``, ``fun="logcosh"``, ``max_iter=1000``, ``tol=1e-4``, seed 42),
  times 100. It uses scikit-learn's ``FastICA``, the implementation the paper's script calls (scikit-learn comes with
  sentence-transformers, a core dependency). The output keeps the encoder's width: its rows are targets in a
  coordinate system of their own, which the trained encoder learns to map definitions into.
* :class:`EntryClassificationLoss`: ``logits = h(d) E^T`` with ``E`` a frozen, non-persistent buffer (never
  trained, never saved: it is rebuilt from the definitions), cross-entropy against the definition's entry.

Scores. The paper scores a raw dot product (``similarity="dot"``): ``h(d)`` is the BERT pooler's tanh output, whose
entries are bounded, against a frozen ``nn.Embedding``. A decoder LLM's last-token states are long (SmolLM2-135M's:
norm about 44) and nearly parallel (mean cosine 0.93 between its WordNet entry embeddings), so raw dot products are
in the thousands and saturate the softmax; the project's default is therefore ``similarity="cosine"``:
``cos(h(d), E_e) / temperature`` (temperature 0.05, the InfoNCE default), the same geometry the embeddings are
used with. ``"dot"`` scores the unnormalised pooled vectors (the embedder's L2 normalisation is skipped), as the
paper does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.definitions import Entry
from .base import EmbeddingLoss

if TYPE_CHECKING:
    from ..embedder import Embedder

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "dot")
ICA_SCALE = 100.0
ICA_SEED = 42


def entry_embeddings(embedder: Embedder, entries: Sequence[Entry], *, batch_size: int = 64, normalize: bool = False,
                     show_progress_bar: bool | None = None) -> Tensor:
    """``(len(entries), dim)`` float32: each entry's mean definition embedding by ``embedder`` (an
    :class:`~mmembed.embedder.Embedder`, encoded in eval mode) of raw pooled vectors, as the paper averages;
    ``normalize=True`` averages L2-normalised embeddings instead. Each distinct definition text is encoded once."""
    if not entries:
        raise ValueError("no entries to embed: read some with mmembed.data.definitions.read_entries.")
    if embedder.multi_vector:
        raise ValueError("entry embeddings need one vector per definition; the special-token pooler gives several. "
                         "Use last, mean or cls pooling.")
    index: dict[str, int] = {}
    owners, rows = [], []
    for i, entry in enumerate(entries):
        if not entry.definitions:
            raise ValueError(f"entry {entry.name!r} has no definition.")
        for definition in entry.definitions:
            owners.append(i)
            rows.append(index.setdefault(definition, len(index)))
    vectors = embedder.encode(list(index), batch_size=batch_size, normalize=normalize, convert_to_tensor=True,
                              show_progress_bar=show_progress_bar)
    vectors = vectors.to(torch.float64)[torch.tensor(rows)]
    owner = torch.tensor(owners)
    sums = torch.zeros(len(entries), vectors.shape[1], dtype=torch.float64).index_add_(0, owner, vectors)
    counts = torch.bincount(owner, minlength=len(entries)).to(torch.float64)
    return (sums / counts[:, None]).float()


def ica_transform(matrix: Tensor | np.ndarray, *, seed: int = ICA_SEED, scale: float = ICA_SCALE,
                  max_iter: int = 1000, tol: float = 1e-4) -> Tensor:
    """The paper's ICA step on entry embeddings ``(n, d)``: standardise each column, FastICA to ``d`` independent
    unit-variance components (logcosh), times ``scale``. Needs more rows than columns. Returns float32 ``(n, d)``."""
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ICA takes a matrix (entries, dim); got shape {x.shape}.")
    n, d = x.shape
    if n <= d:
        raise ValueError(f"ICA of {n} entry embeddings of dimension {d}: it needs more entries than dimensions "
                         f"(raise max_entries above {d}, or turn ica off).")
    constant = np.flatnonzero(x.std(0) == 0)
    if constant.size:
        raise ValueError(f"dimensions {constant[:5].tolist()} of the entry embeddings are constant: ICA's "
                         f"whitening is singular. Turn ica off for this model.")
    standardised = StandardScaler().fit_transform(x)
    ica = FastICA(n_components=d, whiten="unit-variance", fun="logcosh", max_iter=max_iter, tol=tol,
                  random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        sources = ica.fit_transform(standardised)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning("FastICA did not converge in %d iterations (tol %g); using its last estimate.", max_iter, tol)
    if not np.isfinite(sources).all():
        raise ValueError("ICA of the entry embeddings gave non-finite values (near-singular covariance); turn ica "
                         "off or use more entries.")
    return torch.from_numpy(sources * scale).float()


def entry_matrix(embedder: Embedder, entries: Sequence[Entry], *, ica: bool = False, batch_size: int = 64,
                 seed: int = ICA_SEED) -> Tensor:
    """DefSent+'s target matrix: :func:`entry_embeddings`, then (with ``ica``) :func:`ica_transform`."""
    matrix = entry_embeddings(embedder, entries, batch_size=batch_size)
    return ica_transform(matrix, seed=seed) if ica else matrix


def _unnormalized_embed(embedder: Embedder, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``Embedder.forward`` without the L2 normalisation: raw pooled vectors (for dot-product scores)."""
    hidden = embedder.backbone(batch)
    batch = {k: v.to(hidden.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    vectors, counts = embedder.pooler(hidden, batch)
    return embedder.postprocess(vectors, normalize=False), counts


class EntryClassificationLoss(EmbeddingLoss):
    """DefSent+'s objective: cross-entropy of each definition's scores against every entry of a frozen matrix.

    ``forward(anchor=..., entry_ids=...)`` takes the collator's tokenized definitions and their entry indices and
    returns ``{"loss", "accuracy"}`` (accuracy: the entry scored highest is the right one).

    Args:
        model: the :class:`~mmembed.embedder.Embedder` to train.
        entry_embeddings: ``(entries, dim)`` targets (:func:`entry_matrix`); copied into a non-persistent buffer:
            no gradient, no optimizer state, not in ``state_dict`` (so not in checkpoints or the exported model).
        similarity: ``"cosine"`` (``cos / temperature``, the project's default) or ``"dot"`` (the paper's raw dot
            product of unnormalised vectors).
        temperature: divides the cosine scores (unused with ``"dot"``).
        mini_batch_size / mini_batch_tokens: gradient-caching mini-batches, as in
            :class:`~mmembed.losses.base.EmbeddingLoss` (which it derives from: there is no InfoNCE engine, the
            targets are the entries, not other rows of the batch).
    """

    def __init__(self, model: nn.Module, entry_embeddings: Tensor, *, similarity: str = "cosine",
                 temperature: float = 0.05, mini_batch_size: int | None = None,
                 mini_batch_tokens: int | None = None) -> None:
        super().__init__(model, mini_batch_size=mini_batch_size, mini_batch_tokens=mini_batch_tokens,
                         mask_duplicates=False)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r}; choose one of {SIMILARITIES}.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}; it must be positive.")
        if entry_embeddings.dim() != 2 or entry_embeddings.shape[0] < 2:
            raise ValueError(f"entry_embeddings has shape {tuple(entry_embeddings.shape)}; expected (entries >= 2, "
                             f"dim).")
        dim = getattr(model, "embedding_dim", entry_embeddings.shape[1])
        if entry_embeddings.shape[1] != dim:
            raise ValueError(f"entry embeddings have {entry_embeddings.shape[1]} dimensions, the model's embeddings "
                             f"{dim}: build them with the model being trained (or its previous stage).")
        self.similarity = similarity
        self.temperature = temperature
        self.register_buffer("entry_embeddings", entry_embeddings.detach().float().clone(), persistent=False)

    @property
    def num_entries(self) -> int:
        return self.entry_embeddings.shape[0]

    def embed_function(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The Embedder's vectors; unnormalised with ``similarity="dot"``."""
        if self.similarity == "cosine":
            return super().embed_function(batch)
        return _unnormalized_embed(self.model, batch)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Scores ``(B, entries)`` of definition embeddings against every entry (narrower embeddings, a sub-model of
        :class:`~mmembed.losses.elastic.ElasticLoss`, against the entries' first dimensions)."""
        targets = self.entry_embeddings[:, :embeddings.shape[1]]
        h = embeddings.to(targets.dtype)
        if self.similarity == "dot":
            return h @ targets.T
        return F.normalize(h, dim=-1) @ F.normalize(targets, dim=-1).T / self.temperature

    def forward(self, anchor: dict[str, Tensor], entry_ids: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        entry_ids = entry_ids.to(self.entry_embeddings.device)
        if entry_ids.numel() and (int(entry_ids.min()) < 0 or int(entry_ids.max()) >= self.num_entries):
            raise ValueError(f"entry ids range {int(entry_ids.min())}..{int(entry_ids.max())}, but the target matrix "
                             f"has {self.num_entries} entries: build the rows and the matrix from the same entries.")
        logits = self.logits(self.embed(anchor))
        loss = F.cross_entropy(logits, entry_ids)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == entry_ids).float().mean()
        return {"loss": loss, "accuracy": accuracy}
