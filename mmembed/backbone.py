"""The backbone: a transformers model with its tokenizer or processor, turning rendered inputs into token states.

Classes come from the model's config through transformers' Auto classes (``AutoModel``: the base model, without an
LM head), never from its name. GGUF files are converted once to a plain folder (:mod:`mmembed.gguf`); processors
that need torchvision are replaced by image-only ones (:mod:`mmembed.processing`); a PEFT LoRA adapter can sit on
top (:mod:`mmembed.lora`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from . import hub, lora, tokens
from .errors import ConfigError, InputError, ModelFolderError, ModelNotFoundError, one_line
from .gguf import cache_dir, convert_gguf
from .inputs import Item, PromptTemplate, Rendered, Renderer, image_markup_for
from .model_folder import quiet_transformers, read_json
from .onnx_backend import OnnxBody, check_backend, check_onnx_options, onnx_body
from .prefix_cache import SharedPrefix, common_prefix_length
from .processing import load_processor, tokenizer_of
from .quantize import INT8_FILE, check_quantize, dequantized_copy, quantize_model, restore_int8, save_int8

logger = logging.getLogger(__name__)

#: mmembed's own keys in a batch; they are not passed to the model.
MMEMBED_KEYS = ("prefix_lengths", "images_per_sample", "keys")


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"dtype={dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or 'auto'.")
    return value


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_path(name_or_path: str | Path, gguf_file: str | None = None, **hub_kwargs: Any) -> tuple[str, Any]:
    """Return ``(folder_or_hub_id, config)``; GGUF files are converted first. Raises ModelNotFoundError (no model
    there; a hub id fails at once where the hub cannot be reached, :mod:`mmembed.hub`) or ModelFolderError (a
    local folder whose config.json cannot be read)."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    local = True
    if gguf_file is not None or (path.suffix == ".gguf"):
        gguf_path = (path / gguf_file) if gguf_file is not None else path
        name = str(convert_gguf(gguf_path))
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{path}' exists but has no config.json: it is not a Hugging Face model folder. "
                                     f"Point to the folder that holds config.json (or to a .gguf file).")
        read_json(path / "config.json")  # a truncated or corrupt file: named
        name = str(path)
    elif not hub.looks_like_hub_id(name):
        raise ModelNotFoundError(f"no model at '{name_or_path}': there is no such file or folder (and it is not a "
                                 f"hub id such as 'org/name'). Check the path.")
    else:
        local = False
        hub_kwargs = {**hub.hub_kwargs(name), **hub_kwargs}
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError) as exc:
        detail = one_line(exc, 400)
        if local:
            raise ModelFolderError(f"{Path(name) / 'config.json'}: not a usable model config ({detail}).") from exc
        if hub.offline():
            reason = "HF_HUB_OFFLINE=1 is set and it is not in the hub cache"
        elif hub_kwargs.get("local_files_only"):
            reason = f"the hub ({hub.endpoint()}) cannot be reached and it is not in the hub cache"
        else:
            reason = f"the hub did not give it ({detail})"
        raise ModelNotFoundError(f"no model at '{name_or_path}': it is not a local folder, and {reason}. Check the "
                                 f"path or id, or download the model first; a local folder never needs the "
                                 f"network.") from exc
    return name, config


#: files holding a tokenizer's vocabulary (a saved tokenizer has one of them, or at least tokenizer_config.json)
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model")


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer (or a processor with its tokenizer)."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in ("tokenizer_config.json", *VOCABULARY_FILES))


def check_tokenizer(folder: str | Path, tokenizer: Any | None = None) -> None:
    """Raise ModelFolderError when the local ``folder`` has no tokenizer files, or when ``tokenizer`` (loaded from
    it) is empty: a folder copied without them would load and then turn every text into zero tokens."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    empty = tokenizer is not None and not tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    if has_tokenizer_files(folder) and not empty:
        return
    missing = [n for n in ("tokenizer.json", "tokenizer_config.json") if not (folder / n).is_file()] or [
        "its vocabulary"]
    raise ModelFolderError(f"'{folder}' has no usable tokenizer: {' and '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} missing. Copy the tokenizer files from the model "
                           f"this folder came from (Embedder.save and save_pretrained write them).")


def _weights_error(folder: Path, exc: Exception) -> ModelFolderError:
    """The one-line error for weights in ``folder`` that transformers could not read: the corrupt file named."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as bad:
            return ModelFolderError(f"{file}: cannot be read ({bad}); the file is corrupt or truncated. Save or "
                                    f"download the model again.")
    detail = one_line(exc, 400)
    return ModelFolderError(f"'{folder}': the model weights cannot be read ({detail}). Check that the folder holds "
                            f"the full model (model.safetensors).")


def load_base_model(path: str, causal_lm: bool = False, **kwargs: Any) -> nn.Module:
    """``AutoModel.from_pretrained`` (the base model, no LM head), or ``AutoModelForCausalLM`` with ``causal_lm``
    (models that generate, e.g. rationale mode); weights missing from the checkpoint are an error (they would be
    random), while unused ones (an LM head) are expected and not reported. Unreadable weights of a local folder
    raise ModelFolderError naming the file; loading shows no progress bar."""
    from safetensors import SafetensorError

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    if kwargs.get("local_files_only"):  # transformers does not pass it on to its look-up of a PEFT adapter
        kwargs["adapter_kwargs"] = {"local_files_only": True, **kwargs.get("adapter_kwargs", {})}
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
    except (SafetensorError, OSError) as exc:
        if not Path(path).is_dir():
            raise
        raise _weights_error(Path(path), exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"'{path}': {len(missing)} weights of {type(model).__name__} are not in the checkpoint "
                         f"(e.g. {missing[:3]}); they would be random. Check that the folder holds the full model.")
    return model


class Backbone(nn.Module):
    """A transformers model plus its tokenizer/processor and prompt template: rendered inputs -> token states."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        template: PromptTemplate | None = None,
        *,
        max_length: int | None = None,
        padding_side: str | None = None,
        layer: int = -1,
        name_or_path: str | None = None,
        quantize: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.quantize = quantize  # the quantization of model's linear layers (mmembed.quantize), None: float
        self.backend = "torch"  # or "onnx" (use_onnx): the forward pass runs in ONNX Runtime
        self.onnx: OnnxBody | None = None
        self.processor = processor
        self.template = template or PromptTemplate()
        num_layers = model.config.get_text_config().num_hidden_layers if hasattr(model, "config") else None
        self.layer = -1 if layer == num_layers else layer
        self.name_or_path = name_or_path
        base = lora.base_model(model)
        config = base.config
        self.is_encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        tokenizer = self.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if padding_side is not None:
            if padding_side not in ("left", "right"):
                raise ValueError(f"padding_side={padding_side!r}; use 'left' or 'right'.")
            if self.is_encoder and padding_side == "left":
                raise ValueError(f"{type(base).__name__} is an encoder with absolute positions: use "
                                 f"padding_side='right'.")
            tokenizer.padding_side = padding_side
        text_config = config.get_text_config()
        limit = getattr(text_config, "max_position_embeddings", None)
        self.max_length = max_length or min(x for x in (tokenizer.model_max_length, limit, 1 << 20) if x)
        params = inspect.signature(self.body(model).forward).parameters
        self._forward_params = set(params)
        self._accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        # Left padding shifts positions unless they are given; models with their own multimodal rope index
        # (Qwen-VL family) derive positions from the attention mask themselves.
        self._positions_from_mask = ("position_ids" in params and not self.is_encoder
                                     and not hasattr(base, "get_rope_index"))
        self.cache_argument = next((name for name in ("cache", "past_key_values") if name in params), None)
        self.renderer = Renderer(self.template, processor, image_markup_for(processor))
        self._prefix_cache: dict[tuple[str, bool], list[int]] = {}

    @staticmethod
    def body(model: nn.Module) -> nn.Module:
        """The module that gives token states: the model itself, or, for a model with a language-modelling head
        (``*ForCausalLM``), its base model (LoRA layers are injected in place, so they run too)."""
        base = lora.base_model(model)
        has_head = getattr(base, "get_output_embeddings", lambda: None)() is not None
        return base.base_model if has_head and base.base_model is not base else model

    @property
    def can_generate(self) -> bool:
        """Whether the model has a language-modelling head (loaded with ``causal_lm=True``)."""
        return self.body(self.model) is not self.model

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        adapter: str | Path | None = None,
        template: PromptTemplate | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        layer: int = -1,
        model_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        causal_lm: bool = False,
        quantize: str | None = None,
        backend: str | None = None,
    ) -> Backbone:
        """Load a backbone from a folder, a hub id or a GGUF file, optionally with a LoRA adapter.

        The tokenizer / processor comes from the ``adapter`` folder when it holds one (mmembed's adapter-only saves
        do), else from the model. When the tokenizer is longer than the model's input embeddings (tokens added for
        training, such as ``<|emb|>``), the embeddings grow to its length (:func:`mmembed.tokens.grow_input_embeddings`)
        before the adapter is attached. ``causal_lm`` loads the model with its language-modelling head, so that it
        can generate (rationale mode); token states are the same. ``quantize="int8"`` quantizes the linear layers
        (adapter merged first; :mod:`mmembed.quantize`); ``backend="onnx"`` runs the forward pass in ONNX Runtime
        (:mod:`mmembed.onnx_backend`; with ``quantize="int8"``, ONNX Runtime's int8 matrix products).
        """
        quantize, backend = check_quantize(quantize), check_backend(backend)
        if backend == "onnx":
            check_onnx_options(device, layer, causal_lm)
        hub_options = {"trust_remote_code": trust_remote_code, **hub.hub_kwargs(name_or_path)}
        path, config = resolve_model_path(name_or_path, gguf_file, **hub_options)
        # an adapter folder saved by mmembed holds the tokenizer it was trained with (with any added tokens)
        processor_path = str(adapter) if adapter is not None and has_tokenizer_files(adapter) else path
        check_tokenizer(processor_path)
        processor = load_processor(processor_path, config, **hub_options, **(processor_kwargs or {}))
        check_tokenizer(processor_path, tokenizer_of(processor))
        model = load_base_model(path, causal_lm, dtype=resolve_dtype(dtype), **hub_options, **(model_kwargs or {}))
        # a tokenizer with added tokens (<|emb|>) needs their rows; never shrinks (padded vocabularies stay as is)
        tokens.grow_input_embeddings(model, len(tokenizer_of(processor)))
        if adapter is not None:
            model = lora.load_adapter(model, adapter)
        model.to(device or default_device()).eval()
        if quantize is not None and backend == "torch":
            encoder = lora.base_model(model).config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            model = quantize_model(model, quantize, keep_first_layer=not encoder)
            if (Path(path) / INT8_FILE).is_file():  # a saved quantized model: its exact int8 weights
                restore_int8(model, Path(path) / INT8_FILE)
        backbone = cls(model, processor, template, max_length=max_length, padding_side=padding_side, layer=layer,
                       name_or_path=str(name_or_path), quantize=quantize)
        if backend == "onnx":
            backbone.use_onnx()
        return backbone

    def use_onnx(self) -> None:
        """Run the forward pass through ONNX Runtime from now on (an adapter is merged first; the export is cached,
        :mod:`mmembed.onnx_backend`)."""
        if lora.has_adapter(self.model):
            self.model = self.model.merge_and_unload()
        base = self.body(self.model)
        sample = dict(self.tokenizer(["a sample sentence", "hi"], padding=True, return_tensors="pt"))
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
        if self._positions_from_mask:
            sample["position_ids"] = (sample["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            names.append("position_ids")
        encoder = lora.base_model(self.model).config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        self.onnx = onnx_body(lora.base_model(self.model), base, names, sample, self.quantize, cache_dir(), encoder)
        self.backend = "onnx"

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def tokenizer(self) -> Any:
        return tokenizer_of(self.processor)

    @property
    def config(self) -> PreTrainedConfig:
        return lora.base_model(self.model).config

    @property
    def supports_images(self) -> bool:
        return self.renderer.multimodal

    @property
    def hidden_size(self) -> int:
        return self.config.get_text_config().hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def can_cache_prefix(self) -> bool:
        """Whether a shared prompt prefix can be run once and reused (causal text decoders)."""
        return self._positions_from_mask and self.cache_argument is not None and self.onnx is None

    @property
    def add_special_tokens(self) -> bool:
        """Chat-rendered strings already hold the model's special tokens; plain strings get them added."""
        return not self.renderer.uses_chat

    # ----------------------------------------------------------------------------------------------- tokenizing
    def prefix_ids(self, prefix: str) -> list[int]:
        """Token ids of a rendered prefix on its own (cached)."""
        key = (prefix, self.add_special_tokens)
        if key not in self._prefix_cache:
            self._prefix_cache[key] = self.tokenize_texts([prefix])[0]
        return self._prefix_cache[key]

    def prefix_length(self, ids: list[int], prefix: str) -> int:
        """How many leading tokens of ``ids`` belong to ``prefix`` alone.

        A token that the prefix's last characters share with the content (BPE merges the space of ``"Query: "`` into
        the next word) counts as content, so no content is ever left out.
        """
        return common_prefix_length(ids, self.prefix_ids(prefix), keep_last=False)

    def tokenize(self, rendered: list[Rendered], with_prefix_lengths: bool = False) -> dict[str, Tensor]:
        """Tokenize (and process images of) one batch of rendered inputs, padded."""
        texts = [r.text for r in rendered]
        images = [img for r in rendered for img in r.images]
        if images:
            batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt",
                                   add_special_tokens=self.add_special_tokens)
        else:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt", add_special_tokens=self.add_special_tokens)
        batch = dict(batch)
        if with_prefix_lengths:
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
            batch["prefix_lengths"] = torch.tensor([self.prefix_length(ids, r.prefix) for ids, r in zip(rows, rendered)])
        return batch

    def tokenize_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered text-only inputs, unpadded and untruncated (see :meth:`fit_to_length`)."""
        return self.tokenizer(texts, add_special_tokens=self.add_special_tokens, verbose=False)["input_ids"]

    def fit_to_length(self, item: Item, prompt: str, rendered: Rendered, ids: list[int],
                      where: str = "input") -> tuple[Rendered, list[int]]:
        """Make an over-long text input fit ``max_length`` tokens.

        When the template puts something after the text (an instruction such as "Summarize the above text in one
        word:", the chat template's end), the *text* is shortened so that the template stays whole; otherwise the
        text is truncated keeping the tokenizer's special tokens, as sentence-transformers does. Chat conversations
        are not cut: they raise.
        """
        limit = self.max_length
        if len(ids) <= limit:
            return rendered, ids
        if item.messages is not None:
            raise InputError(f"{where}: the conversation is {len(ids)} tokens, more than max_length={limit}. Shorten "
                             f"it or load the model with a larger max_length.")
        if item.text is not None and not rendered.text.endswith(item.text):
            text_ids = self.tokenizer(item.text, add_special_tokens=False, verbose=False)["input_ids"]
            keep = len(text_ids) - (len(ids) - limit)
            for _ in range(3):  # decoding and re-tokenizing may move a boundary by a token or two
                if keep <= 0:
                    break
                shorter = Item(text=self.tokenizer.decode(text_ids[:keep]), image=item.image)
                candidate = self.renderer.render(shorter, prompt)
                new_ids = self.tokenize_texts([candidate.text])[0]
                if len(new_ids) <= limit:
                    return candidate, new_ids
                keep -= len(new_ids) - limit
            logger.warning("%s: the template alone is longer than max_length=%d tokens; its end is cut.", where, limit)
        ids = self.tokenizer(rendered.text, truncation=True, max_length=limit,
                             add_special_tokens=self.add_special_tokens)["input_ids"]
        return rendered, ids

    def pad(self, input_ids: list[list[int]]) -> dict[str, Tensor]:
        return dict(self.tokenizer.pad({"input_ids": input_ids}, padding=True, return_tensors="pt"))

    # ----------------------------------------------------------------------------------------------- forward
    def model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()
                  if k not in MMEMBED_KEYS}
        mask = inputs.get("attention_mask")
        if self._positions_from_mask and mask is not None and "position_ids" not in inputs and bool(
                (mask[:, 0] == 0).any()):
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if "use_cache" in self._forward_params or self._accepts_kwargs:
            inputs["use_cache"] = False
        return inputs

    @property
    def num_layers(self) -> int:
        """The language model's number of transformer layers."""
        return self.config.get_text_config().num_hidden_layers

    def layer_index(self, layer: int) -> int:
        """``layer`` as a count of layers run (``-1`` = all, ``-2`` = all but the last, ...; ``0`` = embeddings)."""
        n = self.num_layers
        if not -n - 1 <= layer <= n:
            raise ValueError(f"layer={layer} is out of range for a model with {n} layers (use 0..{n} or negative "
                             f"indices; -1 is the last layer).")
        return layer if layer >= 0 else n + 1 + layer

    def forward(self, batch: dict[str, Tensor], prefix: SharedPrefix | None = None) -> Tensor:
        """Token states ``(batch, seq, hidden)`` at ``self.layer``.

        An intermediate layer ``L`` is an early exit: only the first ``L`` layers run, and their output passes the
        model's final norm, so the states equal the full pass's ``hidden_states[L]`` after that norm. With
        ``prefix``, ``batch`` holds only the tokens after that shared prefix, whose keys and values are reused.
        """
        return self.states_at(batch, [self.layer], prefix)[0]

    def states_at(self, batch: dict[str, Tensor], layers: Sequence[int], prefix: SharedPrefix | None = None
                  ) -> list[Tensor]:
        """Token states at each of ``layers`` from one forward pass that runs only up to the deepest of them
        (intermediate layers pass the final norm; used by elastic training, :mod:`mmembed.losses.elastic`)."""
        wanted = [self.layer_index(layer) for layer in layers]
        deepest = max(wanted)
        inputs = self.model_inputs(batch)
        if prefix is not None:
            inputs.update(prefix.model_inputs(inputs["attention_mask"], self.cache_argument))
        with self.running_layers(deepest) as exits:
            top = deepest if exits else self.num_layers  # layers the model's last_hidden_state comes from
            need_all = any(layer != top for layer in wanted)
            run = self.onnx if self.onnx is not None else self.body(self.model)  # onnx: layer -1 only (load checks)
            out = run(**inputs, output_hidden_states=need_all, return_dict=True)
        norm = self.final_norm() if need_all else None
        states = []
        for layer in wanted:
            if layer == top:
                states.append(out.last_hidden_state)
            else:
                hidden = out.hidden_states[layer]
                states.append(norm(hidden) if norm is not None else hidden)
        return states

    def layer_stack(self) -> tuple[nn.Module, str] | None:
        """``(parent, attribute)`` of the language model's list of transformer layers (the ``nn.ModuleList`` of
        ``num_hidden_layers`` modules nearest the decoder's root), or None when the architecture hides it."""
        if getattr(self, "_layer_stack", None) is None:
            base = lora.base_model(self.model)
            try:
                root = base.get_decoder()
            except (AttributeError, ValueError, NotImplementedError):
                root = base
            found = None
            queue = [root]
            while queue and found is None:  # breadth first: the stack nearest the root
                module = queue.pop(0)
                for name, child in module.named_children():
                    if isinstance(child, nn.ModuleList) and len(child) == self.num_layers:
                        found = (module, name)
                        break
                    queue.append(child)
            if found is None:
                logger.warning("%s: no list of %d layers found; intermediate layers run the full model.",
                               type(base).__name__, self.num_layers)
            self._layer_stack = found or ()
        return self._layer_stack or None

    @contextmanager
    def running_layers(self, count: int) -> Iterator[bool]:
        """Within the block the model runs only its first ``count`` layers (early exit; the final norm still
        applies). Yields whether it does (False when the layer list was not found: the full model runs)."""
        stack = self.layer_stack() if count < self.num_layers else None
        if stack is None:
            yield count >= self.num_layers
            return
        parent, name = stack
        full = parent._modules[name]
        parent._modules[name] = full[:count]
        try:
            yield True
        finally:
            parent._modules[name] = full

    def final_norm(self) -> nn.Module | None:
        """The decoder's final normalisation, when the architecture has one."""
        base = lora.base_model(self.model)
        try:
            decoder = base.get_decoder()
        except (AttributeError, ValueError, NotImplementedError):
            decoder = base
        return getattr(decoder, "norm", None)

    def compile_layers(self, **options) -> int:
        """``torch.compile`` each transformer layer of the language model in place (``nn.Module.compile``; weights,
        state-dict keys and LoRA adapters unchanged); returns how many. Fuses the norms, rotary embeddings and LoRA
        additions between the matrix products: 1.74x the Qwen2-VL-2B LoRA training step on an H200
        (``bench/RESULTS.md``). Compilation happens on the first calls (seconds to a minute)."""
        stack = self.layer_stack()
        if stack is None:
            raise ValueError(f"{type(lora.base_model(self.model)).__name__}: no list of {self.num_layers} layers "
                             f"found to compile; run without compile_layers.")
        parent, name = stack
        layers = getattr(parent, name)
        for layer in layers:
            layer.compile(**options)
        return len(layers)

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, folder: str | Path, adapter_only: bool = False, state_dict: dict | None = None) -> None:
        """Save model weights (safetensors) and processor into ``folder`` as they are written (Embedder.save writes
        into a staging folder and moves the files in when complete); LoRA adapters are merged unless ``adapter_only``.

        A merged export folds trained token rows (``lora_config(..., trainable_token_indices=...)``) into the saved
        embedding matrix; an adapter-only save stores just those rows with the LoRA weights.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.quantize is not None and self.onnx is None:
            if adapter_only:
                raise ValueError(f"this model is quantized ({self.quantize}) with its adapter merged: save the whole "
                                 f"model, or load it without quantize to save the adapter alone.")
            model = dequantized_copy(self.model)  # float weights any tool loads; the exact int8 ones beside them
            save_int8(self.model, folder / INT8_FILE)
        elif lora.has_adapter(self.model) and not adapter_only:
            if state_dict is not None:
                raise ValueError("a merged export merges the live weights; save adapter_only=True with a state_dict.")
            model = lora.merged_copy(self.model)
        elif adapter_only and not lora.has_adapter(self.model):
            raise ValueError("adapter_only=True but this model has no LoRA adapter.")
        else:
            model = self.model
        extra = {}
        if adapter_only and lora.trained_token_ids(model):
            # the trained rows are in the adapter; the rest of the grown embedding matrix is rebuilt on loading
            # (Backbone.load), so PEFT need not store the whole matrix because the vocabulary grew
            extra["save_embedding_layers"] = False
        card = folder / "README.md"
        had_card = card.exists()
        with quiet_transformers():  # no progress bar, no DeepSpeed import (and its line on stdout)
            model.save_pretrained(folder, state_dict=state_dict, **extra)
            self.processor.save_pretrained(folder)
        if not had_card:
            card.unlink(missing_ok=True)  # PEFT's blank template card: a model card is the recipe's to write
