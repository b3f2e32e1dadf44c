"""Training: the Trainer subclass, its arguments, and distributed set-up."""


def __getattr__(name: str):  # submodules load on first use: ``mmembed.train.<module>`` after ``import mmembed``
    if name == "EmbeddingTrainer":
        from .trainer import EmbeddingTrainer

        return EmbeddingTrainer
    from .._lazy import submodule

    return submodule(__name__, name)
