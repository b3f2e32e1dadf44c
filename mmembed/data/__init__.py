"""Training data: readers for the supported formats, the collator, and batch samplers."""


def __getattr__(name: str):  # submodules load on first use: ``mmembed.data.<module>`` after ``import mmembed``
    from .._lazy import submodule

    return submodule(__name__, name)
