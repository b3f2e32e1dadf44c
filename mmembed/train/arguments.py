"""Dataclass arguments of the training recipes (parsed from YAML plus command-line overrides by ``TrlParser``).

Each dataclass checks its values in ``__post_init__`` (:func:`~mmembed.train.checks.check_fields`), so a wrong type
or an out-of-range value stops the recipe while parsing, with one line naming the key, the value and the rule;
``DataArguments`` also reads its ``eval_sts_file`` then, so that a bad evaluation file (a missing file, a line that
is not a scored pair) stops the run before any model is built, not at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..data.readers import reader_names
from ..eval.sts import read_sts_benchmark
from ..pooling import Pooler
from .checks import NON_NEGATIVE, POSITIVE, POSITIVE_INT, Rule, check_fields, fail, integer, list_of, number, one_of
from .distributed import pin_memory_field

#: ``pooling`` values (``special_token:<token>`` names the pooled token)
POOLINGS = tuple(dict.fromkeys(("last", "mean", "mean_excluding_prefix", "cls", *sorted(Pooler.registry))))
#: ``train_format`` values across the recipes (each recipe accepts its own subset; several comma-separated)
TRAIN_FORMATS = tuple(name for name in reader_names() if name != "grace")  # GRACE reads its own (GraceArguments)


def _is_dtype(value: str) -> bool:
    return value == "auto" or isinstance(getattr(torch, value, None), torch.dtype)


MODEL_RULES = {
    "pooling": one_of(*POOLINGS, also="special_token:<token>", accept=lambda v: v.startswith("special_token:")),
    "dtype": Rule(lambda v: isinstance(v, str) and _is_dtype(v), "a torch dtype name (float32, bfloat16, float16, "
                                                                  "auto)"),
    "max_length": POSITIVE_INT, "lora_r": POSITIVE_INT, "lora_alpha": integer(gt=0),
    "lora_dropout": number(ge=0, lt=1)}
DATA_RULES = {
    "train_format": Rule(lambda v: isinstance(v, str) and all(f.strip() in TRAIN_FORMATS for f in v.split(",")),
                         f"one of {', '.join(TRAIN_FORMATS)} (or several, comma-separated)"),
    "dataset_weights": Rule(lambda v: list_of(NON_NEGATIVE)(v) and sum(v) > 0, "a list of numbers >= 0 with a sum "
                                                                                "> 0", is_list=True),
    "max_train_samples": POSITIVE_INT}
#: the ``TrainingArguments`` values that break a run later when wrong (also checked in GRACE's ``GRPOConfig``)
TRAINER_RULES = {
    "per_device_train_batch_size": POSITIVE_INT, "gradient_accumulation_steps": POSITIVE_INT,
    "max_steps": integer(ge=-1), "num_train_epochs": POSITIVE, "learning_rate": NON_NEGATIVE, "seed": integer(),
    "data_seed": integer()}
CONTRASTIVE_RULES = {"temperature": POSITIVE, "mini_batch_size": POSITIVE_INT, "mini_batch_tokens": POSITIVE_INT}


@dataclass
class ModelArguments:
    """The model to train: backbone, template, pooler, LoRA."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "folder, hub id or .gguf (default: "
                                                                             "the embedded SmolLM2-135M)"})
    template_text: str = field(default="{text}", metadata={"help": "text format, with a {text} slot"})
    template_image: str = field(default="{image}", metadata={"help": "image format, with an {image} slot"})
    template_text_image: str = field(default="{image}{text}", metadata={"help": "text+image format"})
    chat: bool = field(default=False, metadata={"help": "render through the model's chat template"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message (with chat)"})
    template_response: str | None = field(default=None, metadata={
        "help": "fixed assistant reply after each input (with chat), e.g. <|emb|> for special-token pooling"})
    pooling: str = field(default="last", metadata={"help": "last, mean, mean_excluding_prefix, cls, or "
                                                           "special_token:<token> (e.g. special_token:<|emb|>)"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype; bf16 autocast (--bf16) is on by default "
                                                               "where a CUDA device supports it"})
    max_length: int | None = field(default=None, metadata={"help": "max tokens per input"})
    lora: bool = field(default=True, metadata={"help": "train a LoRA adapter on the language model"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "go on training this LoRA adapter folder (an earlier stage's adapter-only save) instead of a new "
                "one; its rank and target modules replace lora_r / lora_target_modules"})
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "short names of the language model's linear layers (default: all of them)"})
    lora_modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "modules trained in full next to the adapter and saved with it (PEFT modules_to_save, matched by "
                "the end of their path), e.g. visual: a small vision tower"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA (weight-decomposed LoRA) instead of LoRA"})
    compile_layers: bool = field(default=False, metadata={
        "help": "torch.compile each transformer layer (GPU: 1.74x the Qwen2-VL-2B LoRA step, bench/RESULTS.md)"})

    def __post_init__(self) -> None:
        check_fields(self, MODEL_RULES)
        if self.init_adapter is not None and self.lora_modules_to_save:
            raise fail("lora_modules_to_save", self.lora_modules_to_save,
                       "null with init_adapter (the adapter's own config says which modules it trains)")


@dataclass
class DataArguments:
    """The training data."""

    train_file: str | None = field(default=None, metadata={
        "help": "JSON lines (or a SICK folder with --train_format sick); several comma-separated files, or a "
                "folder of *.jsonl files, make a mixture sampled one dataset per batch"})
    dataset_weights: list[float] | None = field(default=None, metadata={
        "help": "sampling weight of each train file of a mixture (default: proportional to size)"})
    train_format: str = field(default="triplets", metadata={
        "help": "triplets, pairs, mmeb, multiturn, sick, sentences, documents (ccp)"})
    image_root: str | None = field(default=None, metadata={"help": "folder image paths are resolved in"})
    skip_bad_records: bool = field(default=False, metadata={"help": "count and report bad records, don't stop"})
    max_train_samples: int | None = None
    query_prompt: str = field(default="", metadata={"help": "instruction put in front of anchors"})
    eval_sts_file: str | None = field(default=None, metadata={"help": "STS-B file for the final Spearman score"})
    eval_before_training: bool = field(default=False, metadata={"help": "also score the untrained model"})

    def __post_init__(self) -> None:
        check_fields(self, DATA_RULES)
        if self.eval_sts_file:  # read now: a bad file stops the run with its file:line, not after the training
            read_sts_benchmark(self.eval_sts_file)


@dataclass
class ContrastiveTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the contrastive loss and gradient-caching options; pinned memory only where torch
    sees an accelerator (a CPU run would only warn)."""

    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature tau"})
    learnable_temperature: bool = False
    symmetric: bool = field(default=False, metadata={"help": "add the positive -> query direction"})
    gather_across_devices: bool = field(default=True, metadata={"help": "negatives from every process"})
    mini_batch_size: int | None = field(default=None, metadata={"help": "gradient caching: samples per mini-batch"})
    mini_batch_tokens: int | None = field(default=None, metadata={"help": "gradient caching: padded tokens per "
                                                                           "mini-batch"})
    no_duplicates: bool = field(default=True, metadata={"help": "no input twice in a batch"})
    remove_unused_columns: bool = False
    dataloader_pin_memory: bool = pin_memory_field()

    def __post_init__(self) -> None:
        check_fields(self, {**TRAINER_RULES, **CONTRASTIVE_RULES})
        super().__post_init__()
