"""LoRA adapters through PEFT: attach (optionally with trainable token rows), load (with a clear error when the
adapter does not fit), merge."""

from __future__ import annotations

import copy
import operator
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .errors import AdapterMismatchError, ModelFolderError, ModelNotFoundError, one_line
from .model_folder import read_json
from .parallel import full_shape
from .quantize import quiet_torchao

quiet_torchao()  # PEFT imports torchao when it is installed


def has_adapter(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if has_adapter(model) else model


def language_model_linear_layers(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Full module paths of the ``nn.Linear`` layers inside the language model (never the vision tower).

    ``names`` keeps only layers whose last path component is listed (e.g. ``["q_proj", "v_proj"]``).
    """
    base = base_model(model)
    try:
        decoder = base.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        decoder = base
    prefix = next((name for name, module in base.named_modules() if module is decoder), "")
    found = [f"{prefix}.{name}" if prefix else name for name, module in decoder.named_modules()
             if isinstance(module, nn.Linear) and (names is None or name.rsplit(".", 1)[-1] in names)]
    if not found:
        raise ValueError(f"no nn.Linear layers{f' named {names}' if names else ''} in the language model of "
                         f"{type(base).__name__}.")
    return found


def lora_config(model: nn.Module, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                target_modules: list[str] | None = None, trainable_token_indices: list[int] | None = None,
                modules_to_save: list[str] | None = None, **kwargs):
    """A ``peft.LoraConfig`` on the language model's linear layers, chosen by module path (vision tower excluded).

    ``target_modules`` lists short names (``q_proj`` ...); by default every linear layer of the language model.
    ``trainable_token_indices`` (e.g. the ids :func:`mmembed.tokens.add_special_tokens` returns) makes those rows of
    the input embeddings trainable too, and only them (PEFT's trainable tokens; MuCo's ``<|emb|>`` / ``<|mask|>``):
    they are stored in an adapter-only save and folded into the embedding matrix by :func:`merged_copy`.
    ``modules_to_save`` names modules trained in full next to the adapter (PEFT's ``modules_to_save``, matched by the
    end of their path, e.g. ``["visual"]`` for a small vision tower); they are stored in the adapter too.
    """
    from peft import LoraConfig

    if trainable_token_indices is not None:
        trainable_token_indices = _checked_token_indices(model, trainable_token_indices)
    if modules_to_save:
        modules_to_save = _checked_module_names(model, modules_to_save)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=language_model_linear_layers(model, target_modules),
                      trainable_token_indices=trainable_token_indices, modules_to_save=modules_to_save or None,
                      **kwargs)


def _checked_module_names(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` when each is the end of some module path of ``model`` (PEFT's matching), else a ValueError."""
    paths = [name for name, _ in base_model(model).named_modules() if name]
    missing = [n for n in names if not any(p == n or p.endswith(f".{n}") for p in paths)]
    if missing:
        top = sorted({p.split(".")[0] for p in paths} | {p.split(".")[1] for p in paths if p.count(".") >= 1})
        raise ValueError(f"modules_to_save {missing}: no module of {type(base_model(model)).__name__} has that name "
                         f"(names near the top: {', '.join(top[:20])}).")
    return list(names)


def _checked_token_indices(model: nn.Module, indices) -> list[int] | None:
    """``indices`` as a list of distinct ints that are rows of the input embeddings (else a ValueError)."""
    try:
        indices = list(dict.fromkeys(operator.index(i) for i in indices))
    except TypeError:
        raise ValueError(f"trainable_token_indices={indices!r}: give a list of token ids.") from None
    rows = full_shape(base_model(model).get_input_embeddings().weight)[0]
    bad = [i for i in indices if not 0 <= i < rows]
    if bad:
        raise ValueError(f"trainable_token_indices {bad} are not rows of the input embeddings ({rows} rows). Add new "
                         f"tokens with mmembed.tokens.add_special_tokens first: it grows the embeddings and returns "
                         f"their ids.")
    return indices or None


def trained_token_ids(model: nn.Module) -> list[int]:
    """The input-embedding rows the active adapter of ``model`` trains (empty without trainable tokens)."""
    if not has_adapter(model):
        return []
    config = model.peft_config[model.active_adapter]
    indices = getattr(config, "trainable_token_indices", None) or []
    if isinstance(indices, dict):
        name = _input_embeddings_name(model.get_base_model())
        indices = next((v for k, v in indices.items() if name is not None and name.endswith(k)), [])
    return list(indices)


def _input_embeddings_name(model: nn.Module) -> str | None:
    embeddings = model.get_input_embeddings()
    return next((name for name, module in model.named_modules() if module is embeddings), None)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


#: PEFT 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` property while wrapping every model (our
#: calls of PEFT cannot avoid it); transformers >= 5.24 then warns, so this warning alone is dropped around PEFT.
PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


def attach(model: nn.Module, config) -> nn.Module:
    """Wrap ``model`` with a new, trainable LoRA adapter described by a ``peft.LoraConfig``."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        return get_peft_model(model, config)


def _body_key_mapping(model: nn.Module, adapter: Path) -> dict[str, str] | None:
    """PEFT's ``key_mapping`` for an adapter saved on a base model (weights ``layers.N...``, as every mmembed encoder
    is loaded) put on the same model with its language-modelling head (``LlamaForCausalLM``: ``model.layers.N...``,
    as rationale mode loads it): the body's prefix in front of each key. None when the keys already fit."""
    from safetensors import SafetensorError, safe_open

    prefix = getattr(model, "base_model_prefix", "")
    weights = adapter / "adapter_model.safetensors"
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module) or not weights.is_file():
        return None
    try:
        with safe_open(str(weights), "pt") as f:
            names = list(f.keys())
    except (SafetensorError, OSError):  # unreadable: PeftModel.from_pretrained reports it with the file's name
        return None
    keys = [k.removeprefix("base_model.model.") for k in names]
    if not keys or any(k.startswith(f"{prefix}.") for k in keys) or any(k.startswith("lm_head") for k in keys):
        return None
    return {"^": f"{prefix}."}


def load_adapter(model: nn.Module, adapter: str | Path, is_trainable: bool = False,
                 adapter_name: str = "default") -> nn.Module:
    """Put the PEFT adapter saved in folder ``adapter`` on ``model`` (under ``adapter_name``); raise if it belongs to
    another base model.

    For inference the adapter's weights take the base layers' dtype (bfloat16 on a bfloat16 base); PEFT's default
    upcasts them to float32, which on a GPU runs every LoRA product as a float32 GEMM and made bfloat16 encoding
    2.3x slower (Qwen2-VL-2B on an H200, ``bench/RESULTS.md``). A trainable adapter keeps float32 master weights.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    adapter = Path(adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"no LoRA adapter at '{adapter}': adapter_config.json is missing. Pass the folder "
                                 f"written by Embedder.save(..., adapter_only=True) or peft's save_pretrained.")
    adapter_config = read_json(config_file)
    if not isinstance(adapter_config, dict):
        raise ModelFolderError(f"{config_file}: expected a JSON object, found {type(adapter_config).__name__}.")
    declared = adapter_config.get("base_model_name_or_path")
    ours = getattr(model.config, "_name_or_path", None)
    hint = (f"The adapter was trained on '{declared}' but the base model is '{ours}' ({type(model).__name__}). "
            f"Load the adapter onto the base model it was trained on.")
    _check_token_rows(model, adapter_config.get("trainable_token_indices"), adapter)
    mapping = _body_key_mapping(model, adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        try:
            wrapped = PeftModel.from_pretrained(model, str(adapter), adapter_name=adapter_name,
                                                 is_trainable=is_trainable, autocast_adapter_dtype=is_trainable,
                                                 key_mapping=mapping)
        except SafetensorError as exc:
            raise ModelFolderError(f"{adapter / 'adapter_model.safetensors'}: cannot be read ({exc}); the file is "
                                   f"corrupt or truncated. Save the adapter again.") from exc
        except (ValueError, RuntimeError, KeyError) as exc:
            detail = one_line(exc, 400)
            raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {detail} {hint}") from exc
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        detail = one_line(missing[0], 300)
        raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {detail} {hint}")
    unused = _unused_adapter_keys(wrapped, adapter, mapping)
    if unused:
        raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {len(unused)} adapter weights "
                                   f"have no place in it (e.g. {unused[:2]}). {hint}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return wrapped


def _unused_adapter_keys(wrapped: nn.Module, adapter: Path, mapping: dict[str, str] | None = None) -> list[str]:
    """Adapter weights that PEFT silently skipped because the model has no such module (e.g. a deeper base); with
    ``mapping`` (:func:`_body_key_mapping`), the saved keys as PEFT renamed them."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        saved = set(f.keys())
    for pattern, replacement in (mapping or {}).items():
        saved = {"base_model.model." + re.sub(pattern, replacement, k.removeprefix("base_model.model."))
                 for k in saved}
    name = re.escape(wrapped.active_adapter)
    # live keys name the adapter: "lora_A.default.weight", "token_adapter.trainable_tokens_delta.default",
    # "visual.modules_to_save.default.blocks..." (a module trained in full, saved as "visual.blocks...")
    present = {re.sub(rf"\.(?:modules_to_save\.)?{name}(?=\.|$)", "", k) for k in wrapped.state_dict()}
    return sorted(saved - present)


def _check_token_rows(model: nn.Module, indices, adapter: Path) -> None:
    """Raise when the adapter trains embedding rows (trainable tokens) that ``model`` does not have."""
    groups = indices if isinstance(indices, dict) else {None: indices or []}
    for key, ids in groups.items():
        if not ids:
            continue
        layers = [("input embeddings", model.get_input_embeddings())] if key is None else [
            (f"'{name}' weights", module) for name, module in model.named_modules()
            if (name == key or name.endswith(f".{key}")) and hasattr(module, "weight")]
        for what, layer in layers:
            rows = full_shape(layer.weight)[0]
            if max(ids) >= rows:
                raise AdapterMismatchError(
                    f"LoRA adapter '{adapter}' trains token id {max(ids)}, but the {what} of "
                    f"{type(model).__name__} have only {rows} rows: the adapter was trained with added tokens (such "
                    f"as <|emb|>) that this model's vocabulary lacks. Load it with the tokenizer it was saved with "
                    f"(mmembed.load of the adapter folder grows the embeddings to that tokenizer), or add the tokens "
                    f"first (mmembed.tokens.add_special_tokens).")


def soup(model: nn.Module, adapters: Sequence[str | Path], weights: Sequence[float], rank: int) -> nn.Module:
    """``model`` (without adapter) wrapped with one LoRA adapter, ``default``, whose update is the weighted sum of the
    saved ``adapters``' updates (a model soup: Wortsman et al. 2022; task arithmetic when the weights do not sum to
    1), brought to ``rank`` by SVD -- PEFT's ``add_weighted_adapter`` with ``combination_type="svd"``. Exact when
    ``rank`` is at least the sum of the adapters' ranks; otherwise the best rank-``rank`` approximation per layer."""
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"soup: {len(adapters)} adapters but {len(weights)} weights; give one weight per adapter.")
    names = [f"part{i}" for i in range(len(adapters))]
    wrapped = load_adapter(model, adapters[0], adapter_name=names[0])
    for name, adapter in zip(names[1:], adapters[1:]):
        mapping = _body_key_mapping(base_model(wrapped), Path(adapter))
        wrapped.load_adapter(str(adapter), adapter_name=name, autocast_adapter_dtype=False, key_mapping=mapping)
        unused = _unused_adapter_keys(wrapped, Path(adapter), mapping)
        if unused:
            raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {len(unused)} adapter "
                                       f"weights have no place in it (e.g. {unused[:2]}).")
    wrapped.add_weighted_adapter(names, [float(w) for w in weights], "default", combination_type="svd",
                                 svd_rank=rank)
    wrapped.set_adapter("default")
    for name in names:
        wrapped.delete_adapter(name)
    return wrapped


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its LoRA weights merged into the base weights (for export and serving)."""
    return copy.deepcopy(model).merge_and_unload()
