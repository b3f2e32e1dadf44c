"""Training: the Trainer subclass, its arguments, and distributed set-up."""
