"""The sentence-transformers side of a saved folder: write the files ST reads, and read an ST folder's settings.

An mmembed folder is a sentence-transformers folder whenever ST can reproduce the embeddings (plain prefix prompts,
a pooling mode ST has, the last layer): ``modules.json`` (Transformer at the root -> ``1_Pooling`` ->
``2_Normalize``), ``sentence_bert_config.json``, ``config_sentence_transformers.json`` with the prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelFolderError
from .files import write_text
from .model_folder import read_json

MODULES = {
    "transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "normalize": "sentence_transformers.base.modules.normalize.Normalize",
}

#: files (relative to the folder) that only the sentence-transformers side uses
FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")

# pooling_mode_* keys of ST's Pooling config -> mmembed pooler config
_ST_TO_POOLER = {"lasttoken": "last", "cls_token": "cls", "mean_tokens": "mean", "mean": "mean", "cls": "cls"}


def write(folder: Path, *, pooling_config: dict, normalize: bool, max_length: int, prompts: dict[str, str],
          default_prompt_name: str | None) -> None:
    """Write the ST module chain files into ``folder`` (the model and tokenizer are already at its root); each file
    is written atomically."""
    import sentence_transformers
    import torch
    import transformers

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
    write_text(folder / "config_sentence_transformers.json", json.dumps({
        "model_type": "SentenceTransformer", "prompts": prompts, "default_prompt_name": default_prompt_name,
        "similarity_fn_name": "cosine",
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__}}, indent=2))


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
