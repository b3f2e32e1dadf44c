"""Short training logs: one readable line per logging step instead of the trainer's metrics dict.

``transformers`` prints every log dict whole (``PrinterCallback``, or ``ProgressCallback`` above its bar): with
GRPO's metrics that is about 960 characters a step. :func:`use_short_logs` replaces those two callbacks by ones
that print

    step 10/300  loss 0.2345  lr 3.9e-04  grad_norm 1.23  reward 0.412

and, at the end, ``done: 300 steps in 95.1 s, mean loss 0.2567``. The full dict still goes to every other callback
(TensorBoard, W&B...) and into ``trainer_state.json``'s ``log_history``.
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback

#: metrics a step line shows after loss / lr / grad_norm, when the log has them
EXTRAS = ("accuracy", "reward")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short_line(logs: dict[str, Any], global_step: int, max_steps: int = 0) -> str:
    """One line for a log dict: the step line, the end-of-training line, or the step and the first four numeric
    values of any other log (evaluation)."""
    if "train_runtime" in logs:
        loss = logs.get("train_loss")
        return (f"done: {global_step} steps in {logs['train_runtime']:.1f} s"
                + (f", mean loss {loss:.4f}" if _number(loss) else ""))
    step = f"step {global_step}/{max_steps}" if max_steps > 0 else f"step {global_step}"
    if "loss" in logs:
        parts = [step, f"loss {logs['loss']:.4f}" if _number(logs["loss"]) else f"loss {logs['loss']}"]
        if _number(logs.get("learning_rate")):
            parts.append(f"lr {logs['learning_rate']:.1e}")
        if _number(logs.get("grad_norm")):
            parts.append(f"grad_norm {logs['grad_norm']:.2f}")
        parts += [f"{key} {logs[key]:.4g}" for key in EXTRAS if _number(logs.get(key))]
        return "  ".join(parts)
    shown = [(k, v) for k, v in logs.items() if _number(v) and k not in ("epoch", "total_flos")][:4]
    return "  ".join([step, *(f"{k} {v:.4g}" for k, v in shown)])


class ShortPrinterCallback(PrinterCallback):
    """``PrinterCallback`` printing :func:`short_line` (used when the progress bar is off)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(short_line(logs, state.global_step, state.max_steps), flush=True)


class ShortProgressCallback(ProgressCallback):
    """``ProgressCallback`` writing :func:`short_line` above its bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(short_line(logs, state.global_step, state.max_steps))


def use_short_logs(trainer: Any) -> None:
    """Replace the trainer's printing callbacks (``PrinterCallback``, ``ProgressCallback``) by their short-line
    versions, at the same place in the list and with the same settings. Called once, by the trainers' ``__init__``
    (after ``Trainer.__init__`` added them)."""
    callbacks = trainer.callback_handler.callbacks
    short = {PrinterCallback: ShortPrinterCallback, ProgressCallback: ShortProgressCallback}
    for i, callback in enumerate(callbacks):
        if type(callback) in short:
            replacement = short[type(callback)]()
            replacement.__dict__.update(callback.__dict__)
            callbacks[i] = replacement
