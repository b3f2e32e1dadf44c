"""Evaluation: STS (SentEval protocol) and, in later modules, MMEB, M-BEIR and MTEB."""
