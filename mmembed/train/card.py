"""mmembed's model card for a recipe's output: ``README.md`` in ``<output_dir>`` and in ``<output_dir>/final``.

The card says what was trained (base model, recipe and method, LoRA settings), on what (training and evaluation
files), how long (steps, batch, learning rate, seed), how well (the scores the recipe printed, before -> after) and
how to load the result (``mmembed.load``; ``sentence_transformers.SentenceTransformer``, with
``trust_remote_code=True`` where the folder's module is mmembed's, or the reason it refuses the folder). It replaces the generic card TRL's trainers write (``create_model_card``: "a fine-tuned version of None").

:func:`remember_args` keeps the dataclasses a recipe parsed (``mmembed.train.run.parse_recipe_args`` calls it);
:func:`write_recipe_card` writes the card from them and the recipe's result dict
(``mmembed.train.run.run_recipe`` calls it once ``main`` returns).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import st_format
from ..files import write_text
from ..hub import looks_like_hub_id

#: the dataclasses of the last parsed recipe run (set by :func:`remember_args`)
_ARGS: list[Any] = []
#: the card's file name in the output folder and in ``final``
CARD_FILE = "README.md"
#: the tag line of mmembed's cards (how :func:`is_mmembed_card` knows one)
CARD_TAG = "- mmembed"

#: result keys that are scores (the rest are counts and timings)
_SCORE = re.compile(r"spearman|mrr|acc|recall|ndcg|precision|mse|mmeb|reward")
#: suffix of a result key -> column of the scores table
_WHEN = {"_before": "before", "_first": "before", "_after": "after", "_last": "after"}
#: fields that name data files, in the order the card lists them
_DATA_FIELDS = ("train_file", "train_format", "max_train_samples", "image_root", "dataset_weights", "teacher",
                "teacher_scores_file", "eval_sts_file", "eval_retrieval_dir", "eval_mmeb_dir")
#: fields that say which method of the recipe ran
_METHOD_FIELDS = ("method", "elastic", "stage", "task", "alpha", "stages", "similarity", "false_negative_threshold")


def remember_args(values: Sequence[Any]) -> None:
    """Keep the parsed argument dataclasses of the current run for its model card."""
    _ARGS[:] = list(values)


def forget_args() -> None:
    _ARGS.clear()


def is_mmembed_card(path: str | Path) -> bool:
    """Whether ``path`` is a model card :func:`write_recipe_card` wrote (its front matter's first tag is
    ``mmembed``), as opposed to a README of the user's."""
    try:
        with open(path, encoding="utf-8") as f:
            head = [f.readline().rstrip("\n") for _ in range(3)]
    except (OSError, UnicodeDecodeError):
        return False
    return head == ["---", "tags:", CARD_TAG]


def _value(name: str, args: Sequence[Any]) -> Any:
    return next((getattr(a, name) for a in args if hasattr(a, name)), None)


def _scores(result: dict) -> dict[str, dict[str, Any]]:
    """``{metric: {"before": x, "after": y}}`` from the result keys (``sts_spearman_before`` / ``sts_spearman``,
    ``reward_first`` / ``reward_last``, ``mmeb_before`` / ``mmeb_after`` dicts: their ``overall``)."""
    table: dict[str, dict[str, Any]] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            value = value.get("overall")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _SCORE.search(key):
            continue
        suffix = next((s for s in _WHEN if key.endswith(s)), "")
        name = key[: -len(suffix)] if suffix else key
        table.setdefault(name, {})[_WHEN.get(suffix, "after")] = value
    return table


def _base_model(args: Sequence[Any]) -> str:
    name = _value("model_name_or_path", args)
    return str(name) if name else ("SmolLM2-135M-Instruct, mmembed's default base model "
                                   "(`mmembed.defaults.base_model()`)")


def _method(recipe: str, args: Sequence[Any]) -> str:
    parts = [f"recipe `recipes/{recipe}.py`"]
    for name in _METHOD_FIELDS:
        value = _value(name, args)
        if value is not None and value != "none":
            parts.append(f"{name} `{value}`")
    if _value("lora", args) or _value("init_adapter", args):
        adapter = _value("init_adapter", args)
        parts.append(f"LoRA adapter from `{adapter}`" if adapter else
                     f"LoRA r={_value('lora_r', args)}, alpha={_value('lora_alpha', args)}"
                     + (" (DoRA)" if _value("use_dora", args) else "") + ", merged into the saved weights")
    return ", ".join(parts)


def _training(args: Sequence[Any], result: dict) -> list[str]:
    rows = [("steps", result.get("steps")), ("max_steps", _value("max_steps", args)),
            ("batch per device", _value("per_device_train_batch_size", args)),
            ("gradient accumulation", _value("gradient_accumulation_steps", args)),
            ("learning rate", _value("learning_rate", args)), ("temperature", _value("temperature", args)),
            ("seed", _value("seed", args)), ("training seconds", result.get("train_seconds"))]
    return [f"- {name}: {value}" for name, value in rows if value is not None and value != -1]


def _loading(final: str, folder: Path) -> list[str]:
    lines = ["```python", "import mmembed", "", f"model = mmembed.load({json.dumps(final)})",
             'vectors = model.encode(["a first sentence", "a second one"])', "```"]
    config = folder / "mmembed_config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("rationale"):
        lines.append("\nThe model is saved in rationale mode: `encode` first writes a short rationale for each input "
                     "(greedy generation), then embeds text and rationale.")
    module = folder / st_format.MODULE_CONFIG  # mmembed's ST module (else ST's own modules)
    refusal = json.loads(module.read_text(encoding="utf-8")).get("refusal") if module.is_file() else None
    if refusal:
        lines.append(f"\nsentence-transformers cannot load this folder ({refusal}): use `mmembed.load`.")
    elif (folder / "modules.json").is_file():
        trust = ", trust_remote_code=True" if module.is_file() else ""
        lines += ["", "With sentence-transformers (the same vectors" + (
                      "; the folder's module is mmembed's, so mmembed must be installed" if trust else "") + "):",
                  "", "```python", "from sentence_transformers import SentenceTransformer", "",
                  f"model = SentenceTransformer({json.dumps(final)}{trust})",
                  'vectors = model.encode(["a first sentence"])', "```"]
    return lines


def model_card(recipe: str, args: Sequence[Any], result: dict, final: str | Path) -> str:
    """The card's Markdown for a run of ``recipes/<recipe>.py`` with parsed ``args`` and printed ``result`` whose
    model was saved to ``final``."""
    base = _base_model(args)
    front = ["---", "tags:", CARD_TAG, "- sentence-embeddings", f"- {recipe}"]
    front += [f"base_model: {base}"] if "/" in base and looks_like_hub_id(base) else []
    lines = [*front, "---", "", f"# {Path(final).parent.name or recipe}: an mmembed embedding model", "",
             f"Trained by mmembed's `recipes/{recipe}.py`; saved to `{final}`"
             + (" (LoRA merged)." if _value("lora", args) or _value("init_adapter", args) else "."), "",
             "## Training", "", f"- base model: {base}", f"- method: {_method(recipe, args)}"]
    for name in _DATA_FIELDS:
        value = _value(name, args)
        if value not in (None, "", []):
            lines.append(f"- {name}: `{value}`")
    lines += _training(args, result)
    scores = _scores(result)
    if scores:
        lines += ["", "## Scores", "", "| metric | before training | after training |", "|---|---|---|"]
        lines += [f"| {name} | {row.get('before', '')} | {row.get('after', '')} |" for name, row in scores.items()]
    lines += ["", "## Use", "", *_loading(str(final), Path(final))]
    return "\n".join(lines) + "\n"


def write_recipe_card(recipe: str, result: Any, args: Sequence[Any] | None = None) -> list[Path]:
    """Write the card of the run into ``<output_dir>/README.md`` and ``<final>/README.md`` (``final``: the result's
    ``model``, else ``<output_dir>/final``); nothing when no training arguments were parsed or no model was saved.
    Returns the files written."""
    args = list(_ARGS if args is None else args)
    output_dir = _value("output_dir", args)
    if output_dir is None or not isinstance(result, dict):
        return []
    final = Path(result.get("model") or Path(output_dir) / "final")
    if not final.is_dir():
        return []
    text = model_card(recipe, args, result, final)
    return [write_text(Path(output_dir) / CARD_FILE, text), write_text(final / CARD_FILE, text)]
