"""Evaluation with each benchmark's published protocol: STS (SentEval), MMEB, M-BEIR, MTEB (through ``mteb``),
retrieval on local data (BEIR layout, TREC-QA) and probes of the embedding space. Every suite returns a
:class:`~mmembed.eval.report.Report` (JSON with the protocol recorded, markdown table, bar chart).

>>> from mmembed.eval.sts import evaluate_sts
>>> evaluate_sts(mmembed.load("./my-model"), "../shared/data/senteval").save("eval-results")
"""


def __getattr__(name: str):  # submodules load on first use: ``mmembed.eval.<module>`` after ``import mmembed``
    from .._lazy import submodule

    return submodule(__name__, name)
