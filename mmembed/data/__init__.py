"""Training data: readers for the supported formats, the collator, and batch samplers."""
