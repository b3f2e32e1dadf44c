"""The sentence-transformers side of a saved folder: write the files ST reads, and read an ST folder's settings.

Every folder ``Embedder.save`` writes loads in sentence-transformers (ST) with the vectors ``mmembed.load`` gives,
or is refused there with one line naming the reason; none falls back to ST's silent mean pooling:

- native (:func:`write`), where ST reproduces the embeddings with its own modules (plain prefix prompts, no images,
  a pooling mode ST has, the last layer, no ``truncate_dim``, no rationale mode): ``modules.json`` (Transformer at
  the root -> ``1_Pooling`` -> ``2_Normalize``), ``sentence_bert_config.json``, ``config_sentence_transformers.json``
  with the prompts;
- every other folder (:func:`write_module`): ``modules.json`` names mmembed's own module
  (:data:`MODULE_TYPE`, :mod:`mmembed.integrations.sentence_transformers`), which loads the folder with
  ``Embedder.load`` and embeds with ``Embedder.encode``; ST asks for ``trust_remote_code=True`` to import it, and
  ``config_sentence_transformers.json`` requires the ``mmembed`` package (ST names it when it is missing). What
  ST's one-vector-per-input ``encode`` cannot give (:func:`refusal`: rationale mode, a special-token pooler that
  does not give exactly one vector per input) is written in the module's config, and the module refuses to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelFolderError
from .files import write_text
from .model_folder import read_json

MODULES = {
    "transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "normalize": "sentence_transformers.base.modules.normalize.Normalize",
}

#: mmembed's own sentence-transformers module (a class outside ST's package: ST needs trust_remote_code=True)
MODULE_TYPE = "mmembed.integrations.sentence_transformers.MMEmbedModule"
#: the module's config file, at the folder's root
MODULE_CONFIG = "mmembed_sentence_transformers.json"
#: the first mmembed version with the module (the ``requirements`` of config_sentence_transformers.json)
MODULE_SINCE = "0.1.0"

#: files (relative to the folder) that only the sentence-transformers side uses
FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
         MODULE_CONFIG)

# pooling_mode_* keys of ST's Pooling config -> mmembed pooler config
_ST_TO_POOLER = {"lasttoken": "last", "cls_token": "cls", "mean_tokens": "mean", "mean": "mean", "cls": "cls"}


def write(folder: Path, *, pooling_config: dict, normalize: bool, max_length: int, prompts: dict[str, str],
          default_prompt_name: str | None) -> None:
    """Write the ST module chain files into ``folder`` (the model and tokenizer are already at its root); each file
    is written atomically."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULES["transformer"]},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULES["pooling"]}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": MODULES["normalize"]})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    write_text(folder / "modules.json", json.dumps(modules, indent=2))
    write_text(folder / "1_Pooling" / "config.json", json.dumps(pooling_config, indent=2))
    write_text(folder / "sentence_bert_config.json", json.dumps({
        "max_seq_length": max_length, "do_lower_case": False, "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings"}, indent=2))
    _write_model_config(folder, prompts, default_prompt_name)


def _write_model_config(folder: Path, prompts: dict[str, str], default_prompt_name: str | None,
                        requirements: dict | None = None) -> None:
    """``config_sentence_transformers.json``: the prompts (ST resolves a prompt name and passes its text on), and
    the packages the folder needs (ST checks them before loading any module)."""
    import torch
    import transformers

    try:
        import sentence_transformers

        st_version = sentence_transformers.__version__
    except ImportError:  # written without ST installed: the version it was written for
        st_version = "6.2.0"
    config = {"model_type": "SentenceTransformer", "prompts": prompts, "default_prompt_name": default_prompt_name,
              "similarity_fn_name": "cosine",
              "__version__": {"sentence_transformers": st_version, "transformers": transformers.__version__,
                              "pytorch": torch.__version__}}
    if requirements:
        config["requirements"] = requirements
    write_text(folder / "config_sentence_transformers.json", json.dumps(config, indent=2))


def write_module(folder: Path, *, refusal: str | None, prompts: dict[str, str],
                 default_prompt_name: str | None) -> None:
    """Write the files that make ST load ``folder`` through mmembed's module (:data:`MODULE_TYPE`): the module is
    ``modules.json``'s only module, at the root (the weights and ``mmembed_config.json`` are the folder's own).
    With a ``refusal`` (:func:`refusal`) the module refuses to load, naming it."""
    write_text(folder / "modules.json", json.dumps([{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPE}],
                                                   indent=2))
    write_text(folder / MODULE_CONFIG, json.dumps({"refusal": refusal}, indent=2))
    _write_model_config(folder, prompts, default_prompt_name, requirements={"mmembed": {
        "specifier": f">={MODULE_SINCE}",
        "reason": "The folder's sentence-transformers module is mmembed's (it applies mmembed's template, pooler "
                  "and options)."}})


def refusal(embedder: Any) -> str | None:
    """Why sentence-transformers must not load ``embedder``'s folder (None: its module reproduces ``encode``)."""
    if embedder.rationale is not None:
        return ("it embeds in rationale mode (GRACE): each vector pools a rationale the model generates first, "
                "which mmembed does not export to sentence-transformers")
    token = getattr(embedder.pooler, "token", None)
    if embedder.pooler.mode == "special_token":
        try:
            counts = sorted(set(special_token_counts(embedder.backbone.renderer, token)))
        except Exception as exc:  # noqa: BLE001 - a template that cannot render a probe input: no count to trust
            return (f"the number of {token!r} vectors per input could not be checked (the template did not render a "
                    f"probe input: {type(exc).__name__}: {exc})")
        if counts != [1]:
            placed = " or ".join(map(str, counts))
            return (f"its special-token pooler gives one vector per {token!r} token, and the template places "
                    f"{placed} per input (the number of vectors would depend on each input); sentence-transformers "
                    f"takes exactly one vector per input")
    return None


def special_token_counts(renderer: Any, token: str) -> list[int]:
    """How many times the template places ``token`` in an input of each modality the model takes."""
    from PIL import Image

    from .inputs import Item

    items = [Item(text="x")]
    if renderer.multimodal:
        image = Image.new("RGB", (28, 28))
        items += [Item(image=image), Item(text="x", image=image)]
    return [renderer.render(item).text.count(token) for item in items]


def read(folder: Path) -> dict | None:
    """Settings of an ST folder as mmembed options (pooling, normalize, prompts, max_length), or None. A file that
    does not parse or lacks a key raises ModelFolderError naming the file and key."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise ModelFolderError(f"{modules_file}: expected a list of modules, each with a 'type' string. Restore "
                               f"the file.")
    if any(m["type"] == MODULE_TYPE for m in modules):
        raise ModelFolderError(f"{folder / 'mmembed_config.json'} is missing, and {modules_file} names mmembed's own "
                               f"module, which reads the model's settings from it. Restore the file or save the "
                               f"model again.")
    options: dict = {"normalize": any(m["type"].endswith("Normalize") for m in modules)}
    for module in modules:
        if module["type"].endswith("Pooling"):
            config_file = folder / str(module.get("path", "")) / "config.json"
            config = read_json(config_file)
            if not isinstance(config, dict):
                raise ModelFolderError(f"{config_file}: expected a JSON object of pooling settings.")
            mode = config.get("pooling_mode")
            if mode is None:
                mode = next((k[len("pooling_mode_"):] for k, v in config.items()
                             if k.startswith("pooling_mode_") and v is True), None)
            if mode not in _ST_TO_POOLER:
                raise ModelFolderError(f"{config_file}: sentence-transformers pooling mode {mode!r} is not supported "
                                       f"by mmembed (it reads {sorted(_ST_TO_POOLER)}).")
            pooler = {"mode": _ST_TO_POOLER[mode]}
            if pooler["mode"] == "mean":
                pooler["exclude_prefix"] = not config.get("include_prompt", True)
            options["pooling"] = pooler
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file():
        data = read_json(st_config)
        prompts = data.get("prompts") if isinstance(data, dict) else None
        options["prompts"] = {k: v for k, v in (prompts or {}).items()}
        options["default_prompt_name"] = data.get("default_prompt_name") if isinstance(data, dict) else None
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        data = read_json(sbert)
        max_length = data.get("max_seq_length") if isinstance(data, dict) else None
        if max_length:
            options["max_length"] = max_length
    return options
