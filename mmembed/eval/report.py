"""Evaluation reports: one JSON that records the protocol (model, adapter, prompts, image resolution, data file
hashes, metric per task, seeds), a markdown table, and a bar chart (PNG) per suite."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_path, write_text

logger = logging.getLogger(__name__)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(paths: list[str | Path]) -> dict[str, str]:
    """``{path: sha256}`` of the data files a suite read (recorded so results can be tied to a data revision)."""
    return {str(p): sha256(p) for p in sorted({str(p) for p in paths})}


def weights_fingerprint(model: Any) -> str:
    """A 16-hex-digit hash of every parameter's name, shape, sum and sum of squares: two models with different
    weights (a retrained adapter included) get different fingerprints; cheap enough to compute on every run."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            total = squares = 0.0
            for chunk in param.detach().reshape(-1).split(1 << 22):  # float64 a chunk at a time, not the whole tensor
                chunk = chunk.double()
                total += chunk.sum().item()
                squares += chunk.square().sum().item()
            digest.update(f"{name}{tuple(param.shape)}{total:.10e}{squares:.10e}".encode())
    return digest.hexdigest()[:16]


def describe_model(embedder: Any) -> dict[str, Any]:
    """What produced the embeddings: model path, adapter, chain settings (template, prompts, pooling, layer),
    dtype, parameter count, a fingerprint of the weights and the image processor's resolution settings."""
    info: dict[str, Any] = {"class": type(embedder).__name__}
    backbone = getattr(embedder, "backbone", None)
    if backbone is None:
        return info
    model = backbone.model
    info["name_or_path"] = str(backbone.name_or_path)
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        info["adapter"] = {name: {"r": getattr(c, "r", None), "lora_alpha": getattr(c, "lora_alpha", None),
                                  "target_modules": sorted(getattr(c, "target_modules", None) or [])}
                           for name, c in peft_config.items()}
    info["config"] = embedder.get_config()
    info["dtype"] = str(next(model.parameters()).dtype)
    info["n_parameters"] = int(sum(p.numel() for p in model.parameters()))
    info["weights_fingerprint"] = weights_fingerprint(model)
    info["embedding_dim"] = int(embedder.embedding_dim)
    image_processor = getattr(backbone.processor, "image_processor", None)
    if image_processor is not None:
        keys = ("size", "crop_size", "min_pixels", "max_pixels", "patch_size", "merge_size", "do_resize")
        info["image_processor"] = {"class": type(image_processor).__name__,
                                   **{k: _plain(getattr(image_processor, k)) for k in keys
                                      if getattr(image_processor, k, None) is not None}}
    return info


def _plain(value: Any) -> Any:
    """Size settings as plain JSON values (transformers v5 keeps them in ``SizeDict`` objects)."""
    if hasattr(value, "__dataclass_fields__") or (hasattr(value, "__dict__") and not isinstance(value, type)):
        return {k: v for k, v in vars(value).items() if v is not None and not k.startswith("_")}
    return value


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("mmembed", "torch", "transformers", "peft", "mteb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


@dataclass
class Report:
    """Results of one suite. ``tasks`` maps a task to ``{"score": float | None, "metric": str, ...}`` (scores on
    the suite's 0-100 scale); ``summary`` holds the suite's averages; ``missing`` the tasks that could not run and
    why (never counted as 0); ``flags`` the warnings a reader must see (e.g. collapsed embeddings)."""

    suite: str
    metric: str
    tasks: dict[str, dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    versions: dict[str, str] = field(default_factory=_versions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scores(self) -> dict[str, float | None]:
        return {name: task.get("score") for name, task in self.tasks.items()}

    def to_markdown(self) -> str:
        name = self.model.get("name_or_path", self.model.get("class", "?"))
        lines = [f"# {self.suite}", "", f"model: `{name}` · metric: {self.metric} · {self.created}", ""]
        for flag in self.flags:
            lines.append(f"> **Warning:** {flag}")
        if self.flags:
            lines.append("")
        extra = sorted({k for t in self.tasks.values() for k in ("meta_task", "distribution", "split", "n")
                        if k in t}, key=("split", "meta_task", "distribution", "n").index)
        lines += ["| task | " + " | ".join(extra + [self.metric]) + " |",
                  "|---|" + "---|" * (len(extra) + 1)]
        for name, task in self.tasks.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(task.get(k)) for k in extra) + f" | {_fmt(task.get('score'))} |")
        for name, reason in self.missing.items():
            lines.append(f"| {name} | " + " | ".join("" for _ in extra) + f" | missing: {reason} |")
        if self.summary:
            lines += ["", "| summary | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.summary.items() if not isinstance(v, (dict, list))]
        return "\n".join(lines) + "\n"

    def bar_chart(self, path: str | Path) -> Path | None:
        """A horizontal bar per task (missing tasks shown empty); ``None`` when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed: no bar chart (pip install 'mmembed[eval]').")
            return None
        names = list(self.tasks) + list(self.missing)
        values = [self.tasks[n].get("score") or 0.0 if n in self.tasks else 0.0 for n in names]
        fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
        bars = ax.barh(range(len(names)), values, color=["#4C72B0" if n in self.tasks else "#DDDDDD" for n in names])
        for bar, name in zip(bars, names):
            label = "missing" if name in self.missing else f"{self.tasks[name].get('score', 0):.1f}"
            ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
        chance = [(i, self.tasks[n]["chance"]) for i, n in enumerate(names)
                  if n in self.tasks and self.tasks[n].get("chance") is not None]
        if chance:
            ax.scatter([c for _, c in chance], [i for i, _ in chance], marker="|", s=150, color="black", zorder=3,
                       label="chance")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(100.0, max(values, default=0) * 1.1))
        ax.set_xlabel(self.metric)
        title = f"{self.suite} · {Path(str(self.model.get('name_or_path', ''))).name}"
        ax.set_title(title + (" (FLAGGED)" if self.flags else ""), fontsize=10)
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:  # written whole or not at all
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
        return Path(path)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``<suite>.json``, ``<suite>.md`` and ``<suite>.png`` into ``folder``; each file goes to a temporary
        name and is renamed when complete, so an interrupted save leaves the older file whole."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{self.suite}.json", "markdown": folder / f"{self.suite}.md"}
        write_text(paths["json"], json.dumps(self.to_dict(), indent=2, default=str))
        write_text(paths["markdown"], self.to_markdown())
        png = self.bar_chart(folder / f"{self.suite}.png")
        if png is not None:
            paths["png"] = png
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls(**json.loads(Path(path).read_text()))
