"""What a training method is: the dataclasses its recipe parses, the data it reads before the model loads, the
Trainer it builds, and the scores it reports before and after training.

:meth:`Method.run` is the one order every recipe follows (``recipes/<name>.py`` -> :func:`.runner.run_method`):

1. :meth:`~Method.read_data` — first, so that a bad row stops the run before the model loads;
2. :meth:`~Method.build_embedder` — after every generator was seeded (one seed fixes the LoRA init);
3. :meth:`~Method.score` of the untrained model on the main process (keys suffixed ``_before``), before the Trainer
   exists: under DeepSpeed ZeRO-3 the Trainer shards the parameters, and one process alone could no longer encode;
4. :meth:`~Method.build` the Trainer and :meth:`~Method.train` it, exporting ``<output_dir>/final``;
5. :meth:`~Method.score` of the exported model (LoRA merged) on the main process.

A method overrides the steps it does differently; DefSent+, whose stages each train a fresh model, overrides
:meth:`~Method.run` itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

from ...embedder import Embedder
from .. import distributed
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..build import build_embedder


class RecipeArgs(SimpleNamespace):
    """The parsed arguments of a recipe run, one attribute per role of :attr:`Method.arguments` (``model``,
    ``data``, ``training`` and the method's own, e.g. ``method``, ``muco``, ``distill``)."""

    model: ModelArguments
    data: DataArguments
    training: ContrastiveTrainingArguments


class Method:
    """A training method (module docstring). Subclasses set :attr:`name` and :attr:`arguments` and implement
    :meth:`build`; the other steps have the defaults of a contrastive recipe."""

    #: the method's name (``recipes/<name>.py`` runs it; :data:`mmembed.train.methods.METHODS` registers it)
    name: ClassVar[str]
    #: role -> dataclass, parsed from the YAML config and the command line in this order (``--help`` order)
    arguments: ClassVar[dict[str, type]] = {"model": ModelArguments, "data": DataArguments,
                                            "training": ContrastiveTrainingArguments}
    #: parser defaults of this method, over :func:`~mmembed.train.distributed.training_defaults`
    defaults: ClassVar[dict[str, Any]] = {}
    #: suffix of the trained model's score keys (the untrained model's take ``_before``)
    after_suffix: ClassVar[str] = ""
    #: whether every process prints the result line (else only the main process)
    print_everywhere: ClassVar[bool] = True

    def parser_defaults(self) -> dict[str, Any]:
        """The defaults the recipe's parser starts from."""
        return {**distributed.training_defaults(), **self.defaults}

    def read_data(self, args: RecipeArgs) -> Any:
        """The training data, read before the model is built (default: the mixture parts of ``train_file``)."""
        from .factory import training_parts

        return training_parts(args.data)

    def build_embedder(self, args: RecipeArgs) -> Embedder:
        """The Embedder to train, with its trainable LoRA adapter (the run was seeded at parse time)."""
        return build_embedder(args.model, seed=args.training.seed)

    def start_result(self, args: RecipeArgs, data: Any) -> dict:
        """The first entries of the run's result dict (default: none)."""
        return {}

    def has_scores(self, args: RecipeArgs, data: Any) -> bool:
        """Whether :meth:`score` measures anything for this run (else the exported model is not reloaded)."""
        return False

    def score(self, embedder: Embedder, args: RecipeArgs, data: Any, before: dict | None = None) -> dict:
        """Scores of ``embedder``: the untrained model's when ``before`` is ``None`` (``{}`` to skip), else the
        trained model's, ``before`` holding the untrained model's for the log. Keys without suffix."""
        return {}

    def build(self, args: RecipeArgs, embedder: Embedder, data: Any) -> Any:
        """The Trainer of ``embedder`` on ``data``."""
        raise NotImplementedError

    def train(self, trainer: Any, args: RecipeArgs) -> tuple[dict, str]:
        """Train (resuming when asked) and export the model: ``(summary, final folder)``."""
        return trainer.train_and_export()

    def run(self, args: RecipeArgs) -> dict:
        """The run of a recipe (module docstring); returns the result dict the recipe prints."""
        import mmembed

        data = self.read_data(args)
        embedder = self.build_embedder(args)
        result = self.start_result(args, data)
        main_process = args.training.process_index == 0
        before = self.score(embedder, args, data) if main_process else {}
        result.update({f"{key}_before": value for key, value in before.items()})
        trainer = self.build(args, embedder, data)
        summary, final = self.train(trainer, args)
        result.update(summary)
        if main_process and self.has_scores(args, data):
            trained = mmembed.load(final, device=str(args.training.device))  # the exported model, LoRA merged
            scores = self.score(trained, args, data, before=before)
            result.update({f"{key}{self.after_suffix}": value for key, value in scores.items()})
        del trainer
        return result

    def format_result(self, result: dict) -> str:
        """The line the recipe prints last (default: the dict's repr, read back with ``ast.literal_eval``)."""
        return str(result)

