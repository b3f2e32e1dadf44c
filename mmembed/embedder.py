"""The Embedder: backbone -> pooler -> (truncate) -> normalise, with ``encode`` and a saved folder that mirrors it.

Folder layout (``Embedder.save``)::

    config.json, model.safetensors, tokenizer / processor files    the backbone (module 0, at the root)
    1_Pooling/mmembed_pooling.json (+ config.json for ST)          the pooler
    2_Normalize/                                                   L2 normalisation (when on)
    mmembed_config.json                                            template, prompts, options of the chain; the
                                                                   files the save wrote (``files``)
    modules.json, config_sentence_transformers.json, ...           sentence-transformers files: ST's own modules
                                                                   when ST can reproduce the embeddings, else
                                                                   mmembed's module (:mod:`mmembed.st_format`)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import st_format
from .backbone import Backbone
from .batching import length_batches
from .errors import ConfigError, InputError, MMEmbedError, ModelFolderError, ModelNotFoundError, OutputPathError
from .inputs import InputLike, Item, PromptTemplate, Rendered, check_unicode, open_images, to_items
from .model_folder import FILES_KEY, check_complete, check_config, checked_value, read_json, write_folder
from .pooling import MissingTokenError, Pooler, SpecialTokenPooler
from .prefix_cache import SharedPrefix, shared_token_prefix
from .progress import progress_options
from .quantize import INT8_FILE
from .rationale import RationaleConfig, cache_key, generate_rationales

logger = logging.getLogger(__name__)

CONFIG_NAME = "mmembed_config.json"
FORMAT_VERSION = 1


@dataclass
class _Step:
    """One batch of ``encode``: input indices, their token ids (None: tokenized with images) and shared prefix."""

    indices: list[int]
    ids: list[list[int]] | None
    prefix: SharedPrefix | None
    skip: int = 0  # tokens of each input covered by ``prefix``
    prefix_lengths: list[int] | None = None  # prompt tokens left in ``ids`` (prefix-excluding pooling)


try:
    from jinja2 import TemplateError as _TemplateError
except ImportError:  # pragma: no cover - transformers' chat templates need jinja2
    _TemplateError = ValueError


def truncation_message(indices: list[int], total: int, max_length: int, shown: int = 10) -> str:
    """The one warning an ``encode`` call gives when it shortened inputs to ``max_length`` tokens."""
    names = ", ".join(f"inputs[{i}]" for i in indices[:shown])
    if len(indices) > shown:
        names += f", ... {len(indices) - shown} more"
    return (f"{len(indices)} of {total} input{'s' if total != 1 else ''} {'was' if len(indices) == 1 else 'were'} "
            f"longer than max_length={max_length} tokens and {'was' if len(indices) == 1 else 'were'} shortened "
            f"({names}); load the model with a larger max_length to keep {'it' if len(indices) == 1 else 'them'} "
            f"whole.")


def _check_encode_call(embedder: Embedder, items: list[Item], dim: int | None, batch_size: Any,
                       share: Any = None) -> None:
    """Options and inputs ``encode`` cannot use, named (index, value) before any work."""
    backbone = embedder.backbone
    if share is not None and not (isinstance(share, tuple) and len(share) == 2 and 0 <= share[0] < share[1]):
        raise ConfigError(f"share={share!r} must be (rank, world) with 0 <= rank < world.")
    if dim is not None and not 0 < dim <= backbone.hidden_size:
        raise ConfigError(f"truncate_dim={dim} must be between 1 and the model's dimension {backbone.hidden_size}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1.")
    for i, item in enumerate(items):
        if item.has_image and not backbone.supports_images:
            raise InputError(f"inputs[{i}] holds an image, but '{backbone.name_or_path}' is a text-only model "
                             f"(it has no image processor). Pass text, or load a vision-language model.")
        if embedder.rationale is not None and item.has_image:
            raise InputError(f"inputs[{i}] holds an image, but rationale mode (GRACE) encodes text only. Pass "
                             f"text, or load the model without rationale=... .")
        if item.messages is not None and not backbone.renderer.has_chat_template:
            raise InputError(f"inputs[{i}] is a chat conversation, but '{backbone.name_or_path}' has no chat "
                             f"template. Pass plain text, or set tokenizer.chat_template.")


def _render_all(renderer: Any, items: list[Item], prompt: str) -> list[Rendered]:
    """Render every item; a chat template that refuses one names its index."""
    rendered = []
    for i, item in enumerate(items):
        try:
            rendered.append(renderer.render(item, prompt))
        except MMEmbedError:
            raise
        except (ValueError, TypeError, _TemplateError) as exc:
            raise InputError(f"inputs[{i}]: the model's chat template refused it ({type(exc).__name__}: {exc}). "
                             f"Fix this input or leave it out.") from exc
    return rendered


def _tokenize_batch(backbone: Backbone, rendered: list[Rendered], indices: list[int], with_prefix_lengths: bool
                    ) -> dict[str, Tensor]:
    """Tokenize (and process the images of) one batch; when the processor refuses it, the error names the input
    that it refuses (each input of the batch is tried alone to find it)."""
    try:
        return backbone.tokenize([rendered[i] for i in indices], with_prefix_lengths=with_prefix_lengths)
    except MMEmbedError:
        raise
    except Exception as exc:
        culprit, error = (indices[0], exc) if len(indices) == 1 else (None, exc)
        for i in indices if culprit is None else []:
            try:
                backbone.tokenize([rendered[i]])
            except Exception as alone:  # noqa: BLE001 - whatever the processor raises, name the input
                culprit, error = i, alone
                break
        if culprit is None:
            raise
        sizes = ", ".join(f"{img.width}x{img.height}" for img in rendered[culprit].images)
        fix = f"image size {sizes}). Resize or pad the image to a usual shape" if sizes else "a text input). Fix it"
        raise InputError(f"inputs[{culprit}]: the model's processor cannot take it ({type(error).__name__}: "
                         f"{error}; {fix}, or leave this input out.") from error


def _in_eval_mode(method):
    """Run a module's method with the module in eval mode, restoring its train / eval mode afterwards."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        training = self.training
        self.eval()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.train(training)

    return wrapper


class Embedder(nn.Module):
    """An embedding model: a chain of backbone, pooler and normalisation.

    Args:
        backbone: the model with its tokenizer/processor and prompt template.
        pooler: how token states become embeddings (``"last"``, ``"mean"``, ``"cls"``, ``"special_token"`` or a
            :class:`~mmembed.pooling.Pooler`).
        normalize: L2-normalise embeddings.
        truncate_dim: keep the first ``truncate_dim`` dimensions (Matryoshka), before normalisation.
        prompts: named instruction prefixes, e.g. ``{"query": "Instruct: ...\\nQuery: ", "document": ""}``.
        default_prompt_name: the prompt ``encode`` uses when none is given.
        rationale: rationale mode (GRACE): before pooling, the model generates a rationale for each (text) input,
            deterministically (:class:`~mmembed.rationale.RationaleConfig`); the backbone must be able to generate
            (``Backbone.load(..., causal_lm=True)``; ``mmembed.load`` does this when the option is set).
    """

    def __init__(
        self,
        backbone: Backbone,
        pooler: Pooler | str | dict = "last",
        *,
        normalize: bool = True,
        truncate_dim: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        rationale: RationaleConfig | dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler if isinstance(pooler, Pooler) else Pooler.from_config(pooler)
        self.pooler.bind(backbone.tokenizer)
        self.normalize = normalize
        self.truncate_dim = truncate_dim
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name={default_prompt_name!r} is not in prompts {sorted(self.prompts)}.")
        self.default_prompt_name = default_prompt_name
        self.rationale = RationaleConfig.from_dict(rationale) if isinstance(rationale, dict) else rationale
        if self.rationale is not None and not backbone.can_generate:
            raise ValueError(f"rationale mode needs a model that generates, but '{backbone.name_or_path}' was loaded "
                             f"without its language-modelling head: load it with Backbone.load(..., causal_lm=True) "
                             f"(mmembed.load(..., rationale=...) does this).")
        self._rationales: dict[str, list[int]] = {}  # cache_key(prompt ids, config) -> rationale ids

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def template(self) -> PromptTemplate:
        return self.backbone.template

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim or self.backbone.hidden_size

    @property
    def needs_prefix_lengths(self) -> bool:
        return getattr(self.pooler, "exclude_prefix", False)

    # ------------------------------------------------------------------------------------------------ forward
    def postprocess(self, vectors: Tensor, normalize: bool | None = None, truncate_dim: int | None = None) -> Tensor:
        dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if dim is not None:
            vectors = vectors[..., :dim]
        if self.normalize if normalize is None else normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Embeddings of a tokenized batch: ``(vectors, counts)``; differentiable (used by training)."""
        hidden = self.backbone(batch)
        batch = {k: v.to(hidden.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        vectors, counts = self.pooler(hidden, batch)
        return self.postprocess(vectors), counts

    def pooled_layers(self, batch: dict[str, Tensor], layers: Sequence[int]) -> list[Tensor]:
        """Pooled vectors (neither truncated nor normalised) at each of ``layers``, from one forward pass that runs
        only up to the deepest (elastic training: :class:`~mmembed.losses.elastic.ElasticLoss`)."""
        states = self.backbone.states_at(batch, layers)
        batch = {k: v.to(states[0].device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        return [self.pooler(hidden, batch)[0] for hidden in states]

    # ------------------------------------------------------------------------------------------------ encode
    def resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            known = f"one of this model's prompts {sorted(self.prompts)}" if self.prompts else \
                "a prompt of this model (it has none saved)"
            raise ConfigError(f"prompt_name={name!r} is not {known}; pass prompt='...' or add it to "
                              f"Embedder.prompts.")
        return self.prompts[name]

    @property
    def multi_vector(self) -> bool:
        """Whether ``encode`` returns a list of ``(k_i, dim)`` arrays (one embedding per special token)."""
        return isinstance(self.pooler, SpecialTokenPooler)

    @_in_eval_mode
    @torch.inference_mode()
    def encode(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = 16384,
        show_progress_bar: bool | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        cache_prompt: bool = True,
        return_rationales: bool = False,
        cache_rationales: bool = True,
        share: tuple[int, int] | None = None,
    ) -> np.ndarray | Tensor | list | tuple:
        """Embed texts, images, ``{"text", "image"}`` pairs or chat messages.

        Inputs are batched by length (at most ``batch_size`` items and ``max_batch_tokens`` padded tokens a batch)
        and returned in input order as float32: an array ``(n, dim)`` (``(dim,)`` for a single input), or torch
        tensors on the CPU with ``convert_to_tensor=True`` / ``convert_to_numpy=False``. A special-token pooler gives
        a list of ``(k_i, dim)`` arrays, one row per occurrence of its token. ``share=(rank, world)`` runs only
        batches ``rank, rank + world, ...`` of the plan and returns ``(indices, their embeddings)`` (numpy), opening
        only their images: the shares of ``world`` processes hold bitwise one call's embeddings
        (:func:`mmembed.eval.encoding.encode_split` gathers them). With ``cache_prompt`` (and a causal
        decoder whose pooler ignores the prompt's states) the prompt prefix the inputs share is computed once
        (:mod:`mmembed.prefix_cache`). Encoding runs in eval mode (no dropout: the same input always gives the same
        embedding, also during training), and the model's mode is restored afterwards.

        A bad input raises :class:`~mmembed.errors.InputError` naming it (``inputs[i]: ...``: its type, invalid
        Unicode, an unreadable image or one the model's processor refuses); bytes and sets are refused with the fix.
        Text inputs longer than the model's ``max_length`` are shortened, with one warning per call that counts them.
        The progress bar (``show_progress_bar=None``) shows for many inputs on a terminal only, never in a log file.

        In rationale mode (``self.rationale``) each text input's rationale is generated first (greedy or contrastive
        search, deterministic either way) and pooled with it; rationales are cached by input (``cache_rationales``;
        :meth:`clear_rationale_cache` after changing the weights), and ``return_rationales=True`` returns
        ``(embeddings, rationale strings)``.
        """
        items, single = to_items(inputs, open_images=share is None)
        backbone = self.backbone
        dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        _check_encode_call(self, items, dim, batch_size, share)
        text_prompt = check_unicode(self.resolve_prompt(prompt_name, prompt), "prompt")
        rendered = _render_all(backbone.renderer, items, text_prompt)
        progress = progress_options(show_progress_bar, len(items) >= (16 if self.rationale is not None else 256))
        rationales: dict[int, list[int]] = {}
        plan = self._plan(items, rendered, text_prompt, batch_size, max_batch_tokens, cache_prompt,
                          rationales if self.rationale is not None else None, cache_rationales,
                          not progress["disable"])
        results: list[Tensor] = [torch.empty(0, dim or backbone.hidden_size)] * len(items)
        plan = plan if share is None else plan[share[0]::share[1]]
        for step in tqdm(plan, desc="Encoding", unit="batch", **progress):
            for i, chunk in zip(step.indices, self._run_step(step, rendered, normalize, truncate_dim)):
                results[i] = chunk
        if share is not None:
            done = sorted(i for step in plan for i in step.indices)
            vectors = [results[i].numpy() for i in done]
            return done, vectors if self.multi_vector else \
                np.concatenate(vectors or [np.zeros((0, dim or backbone.hidden_size), np.float32)])
        numpy = convert_to_numpy and not convert_to_tensor
        if self.multi_vector:
            out: Any = [r.numpy() for r in results] if numpy else results
        else:
            out = torch.cat(results) if results else torch.empty(0, dim or backbone.hidden_size)
            out = out.numpy() if numpy else out
        out = out[0] if single else out
        if return_rationales:
            texts = [backbone.tokenizer.decode(rationales.get(i, []), skip_special_tokens=True).strip()
                     for i in range(len(items))]
            return out, (texts[0] if single else texts)
        return out

    def _run_step(self, step: _Step, rendered: list[Rendered], normalize: bool | None, truncate_dim: int | None
                  ) -> tuple[Tensor, ...]:
        """The embeddings of one batch of ``encode``'s plan: a ``(k_i, dim)`` tensor per input of ``step``."""
        backbone = self.backbone
        if step.ids is not None:
            batch = backbone.pad(step.ids)
            if step.prefix_lengths is not None:
                batch["prefix_lengths"] = torch.tensor(step.prefix_lengths)
        else:
            for i in step.indices:
                rendered[i] = open_images(rendered[i], f"inputs[{i}]")
            batch = _tokenize_batch(backbone, rendered, step.indices, self.needs_prefix_lengths)
        hidden = backbone(batch, prefix=step.prefix)
        batch = {k: v.to(hidden.device) for k, v in batch.items() if isinstance(v, Tensor)}
        try:
            vectors, counts = self.pooler(hidden, batch)
        except MissingTokenError as exc:
            raise InputError(f"inputs[{step.indices[exc.row]}]: {exc}") from None
        return self.postprocess(vectors.float(), normalize, truncate_dim).cpu().split(counts.tolist())

    def clear_rationale_cache(self) -> None:
        """Forget cached rationales (they belong to the weights that generated them)."""
        self._rationales.clear()

    def add_rationales(self, prompts: list[list[int]], use_cache: bool = True, **generate_kwargs: Any
                       ) -> list[list[int]]:
        """Rationale token ids for rendered prompt ids (rationale mode), from the cache or generated in batches."""
        assert self.rationale is not None
        keys = [cache_key(p, self.rationale) for p in prompts]
        todo = sorted({k: i for i, k in enumerate(keys) if not (use_cache and k in self._rationales)}.values(),
                      key=lambda i: len(prompts[i]))  # similar lengths together: less padding
        generated = generate_rationales(self.backbone.model, self.backbone.tokenizer, [prompts[i] for i in todo],
                                        self.rationale, **generate_kwargs)
        fresh = {keys[i]: g for i, g in zip(todo, generated)}
        if use_cache:
            self._rationales.update(fresh)
        return [fresh[k] if k in fresh else self._rationales[k] for k in keys]

    def encode_queries(self, inputs: InputLike | Sequence[InputLike], **kwargs: Any) -> np.ndarray | Tensor | list:
        """``encode`` with the ``"query"`` prompt (no prompt when the model has none)."""
        return self.encode(inputs, **self._named_prompt("query", kwargs))

    def encode_documents(self, inputs: InputLike | Sequence[InputLike], **kwargs: Any) -> np.ndarray | Tensor | list:
        """``encode`` with the ``"document"`` prompt (no prompt when the model has none)."""
        return self.encode(inputs, **self._named_prompt("document", kwargs))

    def _named_prompt(self, name: str, kwargs: dict) -> dict:
        if "prompt" not in kwargs and "prompt_name" not in kwargs:
            kwargs = {**kwargs, **({"prompt_name": name} if name in self.prompts else {"prompt": ""})}
        return kwargs

    def _plan(self, items: list[Item], rendered: list[Rendered], prompt: str, batch_size: int,
              max_batch_tokens: int | None, cache_prompt: bool, rationales: dict[int, list[int]] | None = None,
              cache_rationales: bool = True, show_progress_bar: bool = False) -> list[_Step]:
        """Batches of similar length; text inputs that share a prompt prefix get it computed once.

        Over-long text inputs are fitted to ``max_length`` first (``rendered`` is updated in place), with one
        warning that counts them. With ``rationales`` (rationale mode), each text input's generated rationale is
        appended to its ids (and stored there by input index)."""
        backbone = self.backbone
        text_idx = [i for i, r in enumerate(rendered) if not r.images]
        image_idx = [i for i, r in enumerate(rendered) if r.images]
        ids = dict(zip(text_idx, backbone.tokenize_texts([rendered[i].text for i in text_idx]))) if text_idx else {}
        too_long = [i for i in text_idx if len(ids[i]) > backbone.max_length]
        for i in too_long:
            rendered[i], ids[i] = backbone.fit_to_length(items[i], prompt, rendered[i], ids[i], f"inputs[{i}]")
        if too_long:
            logger.warning(truncation_message(too_long, len(items), backbone.max_length))
        if rationales is not None and text_idx:
            generated = self.add_rationales([ids[i] for i in text_idx], use_cache=cache_rationales,
                                            show_progress_bar=show_progress_bar)
            for i, rationale in zip(text_idx, generated):
                rationales[i] = rationale
                ids[i] = ids[i] + rationale
        groups: list[tuple[SharedPrefix | None, list[int], int]] = []
        if cache_prompt and backbone.can_cache_prefix and not self.pooler.needs_prefix_states:
            by_prefix: dict[str, list[int]] = {}
            for i in text_idx:
                by_prefix.setdefault(rendered[i].prefix, []).append(i)
            uncached: list[int] = []
            for prefix_text, members in by_prefix.items():
                length, shared = shared_token_prefix([ids[i] for i in members],
                                                     backbone.tokenize_texts([prefix_text])[0])
                shared_set = {members[k] for k in shared}
                uncached += [i for i in members if i not in shared_set]
                if shared_set:
                    groups.append((SharedPrefix(backbone, ids[members[shared[0]]][:length]), sorted(shared_set),
                                   length))
            text_idx = sorted(uncached)
        groups.append((None, text_idx, 0))
        plan = []
        for prefix, members, skip in groups:
            for b in length_batches([len(ids[i]) - skip for i in members], batch_size, max_batch_tokens):
                indices = [members[j] for j in b]
                lengths = [max(0, backbone.prefix_length(ids[i], rendered[i].prefix) - skip) for i in indices] \
                    if self.needs_prefix_lengths else None
                for i, n in zip(indices, lengths or []):
                    if n + skip >= len(ids[i]):
                        raise InputError(f"inputs[{i}] has no tokens of its own after the prompt, so mean pooling "
                                         f"without the prompt has nothing to average. Give it text.")
                plan.append(_Step(indices, [ids[i][skip:] for i in indices], prefix, skip, lengths))
        for b in length_batches([len(rendered[i].text) for i in image_idx], batch_size, None):
            plan.append(_Step([image_idx[j] for j in b], None, None))
        return plan

    @staticmethod
    def similarity(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> Tensor:
        """Cosine similarity matrix between two sets of embeddings."""
        a, b = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a), torch.as_tensor(
            np.asarray(b) if not isinstance(b, Tensor) else b)
        a, b = a.reshape(-1, a.shape[-1]).float(), b.reshape(-1, b.shape[-1]).float()
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    # ------------------------------------------------------------------------------------------------ saving
    def get_config(self) -> dict:
        backbone = self.backbone
        return {
            "format_version": FORMAT_VERSION,
            "template": backbone.template.to_dict(),
            "max_length": backbone.max_length,
            "padding_side": backbone.tokenizer.padding_side,
            "layer": backbone.layer,
            "pooling": self.pooler.get_config(),
            "normalize": self.normalize,
            "truncate_dim": self.truncate_dim,
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "rationale": self.rationale.to_dict() if self.rationale is not None else None,
            **({"quantize": backbone.quantize} if backbone.quantize is not None else {}),
            **({"backend": backbone.backend} if backbone.backend != "torch" else {}),
        }

    def sentence_transformers_compatible(self) -> bool:
        """Whether sentence-transformers reproduces this model's embeddings with its own modules (a full save then
        writes ST's native files; any other gets mmembed's ST module, :mod:`mmembed.st_format`)."""
        backbone = self.backbone
        return (backbone.template.is_plain_prefix and not backbone.supports_images and backbone.layer == -1
                and self.truncate_dim is None and self.rationale is None and backbone.quantize is None
                and backbone.backend == "torch"
                and self.pooler.sentence_transformers_config(backbone.hidden_size) is not None)

    def save(self, folder: str | Path, adapter_only: bool = False, state_dict: dict | None = None) -> Path:
        """Save the chain to ``folder``; LoRA adapters are merged unless ``adapter_only`` (then the folder refers
        to the base model by its absolute path, or its hub id).

        Nothing is lost (:func:`mmembed.model_folder.write_folder`): every file is written whole into a staging
        folder first. A new ``folder`` then appears at once, complete; an existing one gets the files moved in one by
        one, ``mmembed_config.json`` last, under a marker file (``mmembed_save_incomplete.json``), so a save
        interrupted while writing leaves the old model, and one interrupted while moving leaves a folder that
        ``load`` refuses with one line until it is saved again. ``mmembed_config.json`` lists the files written,
        and a later save into the folder replaces and removes those files only (stale sentence-transformers files,
        adapter or full weights), so the folder always describes this model. A folder
        holding files of the same names that mmembed did not write (a base model's own folder, a download) and an
        adapter-only save into its own base model's folder are refused with :class:`~mmembed.errors.OutputPathError`.
        ``state_dict`` (the backbone model's, e.g. consolidated by DeepSpeed) replaces the live weights when given
        (not with a merged export). Every folder loads in sentence-transformers with the vectors of
        ``mmembed.load(folder)``, or is refused there with the reason (:mod:`mmembed.st_format`).
        """
        folder = Path(folder).expanduser()
        compatible = not adapter_only and self.sentence_transformers_compatible()
        config = self.get_config()
        if adapter_only:
            base = Path(self.backbone.name_or_path).expanduser()
            if base.is_dir() and folder.resolve() == base.resolve():
                raise OutputPathError(f"'{folder}' is the folder of the adapter's base model: saving the adapter "
                                      f"there would replace the base model's files. Save it into another folder.")
            config["base_model"] = str(base.resolve()) if base.exists() else self.backbone.name_or_path
        weights = ["adapter_config.json", "adapter_model.safetensors"] if adapter_only else [
            "config.json", "model.safetensors", *([INT8_FILE] if self.backbone.quantize else [])]

        def write(stage: Path) -> None:
            self.backbone.save(stage, adapter_only=adapter_only, state_dict=state_dict)
            self.pooler.save(stage / "1_Pooling")
            if self.normalize:
                (stage / "2_Normalize").mkdir()
            if compatible:
                st_format.write(stage, normalize=self.normalize, max_length=self.backbone.max_length,
                                pooling_config=self.pooler.sentence_transformers_config(self.backbone.hidden_size),
                                prompts=self.prompts, default_prompt_name=self.default_prompt_name)
            else:  # ST loads it through mmembed's own module, or refuses it naming the reason
                st_format.write_module(stage, refusal=st_format.refusal(self), prompts=self.prompts,
                                       default_prompt_name=self.default_prompt_name)

        write_folder(folder, CONFIG_NAME, config, write, [*weights, "tokenizer.json", "tokenizer_config.json"])
        return folder

    #: options that configure the chain (a ``None`` passed to ``load`` clears a saved value)
    CHAIN_OPTIONS = ("pooling", "normalize", "truncate_dim", "prompts", "default_prompt_name", "rationale")

    @classmethod
    def load(cls, name_or_path: str | Path, **options: Any) -> Embedder:
        """Load a saved mmembed folder, a sentence-transformers folder, a plain HF model or a GGUF file.

        ``options`` override the saved settings: ``adapter``, ``template``, ``pooling``, ``normalize``,
        ``truncate_dim`` (or its short name ``dim``), ``prompts``, ``default_prompt_name``, ``layer``, ``max_length``,
        ``base_model`` (for an adapter-only folder: the base model to put it on, instead of the recorded one),
        ``padding_side``, ``dtype``, ``device``, ``gguf_file``, ``trust_remote_code``, ``model_kwargs``,
        ``processor_kwargs``, ``quantize`` (``"int8"``: fast CPU inference, :mod:`mmembed.quantize`; saved with the
        folder; ``"none"`` clears a saved choice), ``backend`` (``"onnx"``: the forward pass in ONNX Runtime,
        :mod:`mmembed.onnx_backend`; saved with the folder; ``"torch"`` clears it). ``layer=L, dim=D`` gives an elastic model's smaller embedding: only the first ``L``
        layers run (early exit) and the vectors keep their first ``D`` dimensions.
        For the chain options (pooling ... default_prompt_name) an explicit ``None`` clears the saved value; for the
        others ``None`` means "not given". A corrupt or incomplete folder raises ModelFolderError naming file and key
        (or the marker of an interrupted save).
        """
        if "dim" in options:
            if options.get("truncate_dim") is not None:
                raise ValueError("give dim or truncate_dim, not both (dim is the short name of truncate_dim).")
            options["truncate_dim"] = options.pop("dim")
        base_model = options.pop("base_model", None)
        folder = Path(name_or_path).expanduser()
        for where in (folder, options.get("adapter")):
            if isinstance(where, (str, Path)):
                check_complete(Path(where).expanduser())
        saved: dict[str, Any] = {}
        adapter_folder = False
        if (folder / CONFIG_NAME).is_file():
            saved = _read_saved_config(folder / CONFIG_NAME)
            adapter_folder = "base_model" in saved
            if adapter_folder:
                options["adapter"] = options.get("adapter") or folder
                name_or_path = base_model or saved.pop("base_model")
                saved.pop("base_model", None)
                if name_or_path is None:
                    raise ModelNotFoundError(f"{folder} is an adapter without a recorded base model: pass "
                                             f"base_model=<folder, hub id or .gguf> (the model it was trained on).")
        elif folder.is_dir():
            saved = st_format.read(folder) or {}
        if base_model is not None and not adapter_folder:
            raise ValueError(f"base_model={base_model!r} applies to an adapter-only folder; {folder} is not one.")
        if "prompts" in options and "default_prompt_name" not in options:
            saved.pop("default_prompt_name", None)  # it named one of the replaced prompts
        settings = {**saved, **{k: v for k, v in options.items() if v is not None or k in cls.CHAIN_OPTIONS}}
        chain = {k: settings.pop(k) for k in cls.CHAIN_OPTIONS if k in settings}
        if chain.get("rationale") is not None:
            settings["causal_lm"] = True  # rationale mode generates
        backbone = Backbone.load(name_or_path, **settings)
        pooling = chain.pop("pooling", None) or ("mean" if backbone.is_encoder else "last")
        chain = {k: v for k, v in chain.items()
                 if v is not None or k in ("truncate_dim", "default_prompt_name", "rationale")}
        return cls(backbone, pooling, **chain)


def _read_saved_config(file: Path) -> dict[str, Any]:
    """The settings of a saved ``mmembed_config.json``, checked (:func:`mmembed.model_folder.check_config`): the
    template built, the pooler and rationale settings tried, the record keys dropped."""
    saved = check_config(file, read_json(file), FORMAT_VERSION)
    saved.pop("format_version", None)
    saved.pop(FILES_KEY, None)
    saved["template"] = checked_value(file, "template", lambda v: PromptTemplate.from_dict(v), saved["template"])
    for key, build in (("pooling", Pooler.from_config), ("rationale", RationaleConfig.from_dict)):
        if saved.get(key) is not None:
            checked_value(file, key, build, saved[key])
    name = saved.get("default_prompt_name")
    if name is not None and name not in (saved.get("prompts") or {}):
        raise ModelFolderError(f"{file}: key 'default_prompt_name' is {name!r}, which is not one of its 'prompts' "
                               f"{sorted(saved.get('prompts') or {})}. Fix the file or save the model again.")
    return saved
