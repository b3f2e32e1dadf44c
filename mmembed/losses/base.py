"""The base of every embedding loss: the Embedder it trains, how it embeds a column, and the state protocol that lets a
wrapper (:class:`~mmembed.losses.elastic.ElasticLoss`) run it several times in one step.

A loss embeds each tokenized column with :meth:`EmbeddingLoss.embed` (gradient-cached mini-batches when
``mini_batch_size`` / ``mini_batch_tokens`` is set, :mod:`mmembed.losses.gradcache`); a wrapper may replace that
step with :meth:`EmbeddingLoss.embedding_source` (e.g. the vectors of a sub-model cut from one forward pass).
Losses with state across steps (a momentum queue, memory banks, a reference model's embeddings) do their once-a-step
work only when :attr:`EmbeddingLoss.updates_state` and write their state through :meth:`EmbeddingLoss.write_state`,
so that a wrapper's repeated passes read the same state and write it once, after the last pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from .gradcache import cached_embed

#: A replacement of the embedding step: a tokenized batch -> ``(vectors, counts)``.
EmbeddingSource = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]


class EmbeddingLoss(nn.Module):
    """What ``Trainer`` trains: an Embedder (a submodule, so DDP / DeepSpeed wrap one module whose forward does the
    whole step) and an objective on the embeddings of the collator's columns.

    Args:
        model: the :class:`~mmembed.embedder.Embedder` to train.
        mini_batch_size / mini_batch_tokens: gradient-caching mini-batches by count / padded tokens.
        mask_duplicates: identical inputs (same text and image) are not each other's negatives (see
            :meth:`content_keys`).
    """

    def __init__(self, model: nn.Module, mini_batch_size: int | None = None, mini_batch_tokens: int | None = None,
                 mask_duplicates: bool = True) -> None:
        super().__init__()
        self.model = model
        self.mini_batch_size = mini_batch_size
        self.mini_batch_tokens = mini_batch_tokens
        self.mask_duplicates = mask_duplicates
        self._source: EmbeddingSource | None = None
        self._state_mode = "update"  # "update" | "defer" | "read"
        self._deferred: list[Callable[[], None]] = []

    @property
    def config(self):
        """The language model's config (DeepSpeed's "auto" bucket sizes read ``config.hidden_size``)."""
        return self.model.backbone.config.get_text_config()

    def embed_function(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One mini-batch's ``(vectors, counts)``: the Embedder's forward (subclasses change the vectors)."""
        return self.model(batch)

    def embed_with_counts(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(vectors, counts)`` of a tokenized column: from the wrapper's source when one is set, else
        :meth:`embed_function` with gradient caching."""
        if self._source is not None:
            return self._source(batch)
        return cached_embed(self.embed_function, batch, self.mini_batch_size, self.mini_batch_tokens)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The embeddings of a tokenized column."""
        return self.embed_with_counts(batch)[0]

    def content_keys(self, anchor: dict[str, Tensor] | None = None, positive: dict[str, Tensor] | None = None,
                     negative: dict[str, Tensor] | None = None) -> dict[str, Tensor | None]:
        """The engine's ``query_keys`` / ``positive_keys`` / ``negative_keys`` (content hashes the collator
        recorded) with ``mask_duplicates``, else ``{}``. Columns are tokenized batches (their ``"keys"``) or key
        tensors."""
        if not self.mask_duplicates:
            return {}
        columns = {"query_keys": anchor, "positive_keys": positive, "negative_keys": negative}
        return {name: column["keys"] if isinstance(column, dict) else column for name, column in columns.items()}

    @contextmanager
    def embedding_source(self, source: EmbeddingSource) -> Iterator[None]:
        """Within the block, :meth:`embed_with_counts` returns ``source(batch)`` instead of running the model."""
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous

    @property
    def updates_state(self) -> bool:
        """Whether this pass does the loss's once-a-step work (training, and not a wrapper's repeated pass)."""
        return self.training and self._state_mode != "read"

    @property
    def repeat_pass(self) -> bool:
        """Whether this pass repeats the step's first one (inside :meth:`shared_step`, after ``repeat()``)."""
        return self._state_mode == "read"

    @property
    def in_shared_step(self) -> bool:
        """Whether this pass is one of several of one step (inside :meth:`shared_step`)."""
        return self._state_mode != "update"

    def write_state(self, update: Callable[[], None]) -> None:
        """Run a state update (queue or bank push) now, or, inside :meth:`shared_step`, once after its last pass."""
        if not self.updates_state:
            return
        if self._state_mode == "defer":
            self._deferred.append(update)
        else:
            update()

    @contextmanager
    def shared_step(self) -> Iterator[Callable[[], None]]:
        """Several passes of one step: yields ``repeat()``, to call before each pass after the first; those passes
        read the state the first pass read and write nothing; the first pass's writes run when the block ends."""
        def repeat() -> None:
            self._state_mode = "read"

        self._state_mode, self._deferred = "defer", []
        try:
            yield repeat
            for update in self._deferred:
                update()
        finally:
            self._state_mode, self._deferred = "update", []

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing inside the backbone (Trainer calls this for ``gradient_checkpointing=True``)."""
        base = self.model.backbone.model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
                                           or {"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
