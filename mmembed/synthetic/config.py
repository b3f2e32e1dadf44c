"""What the synthetic benchmark writes (``SyntheticConfig``): seed, image size and the counts per task."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyntheticConfig"]


@dataclass(frozen=True)
class SyntheticConfig:
    """What ``generate`` writes. Counts are per task unless said otherwise."""

    seed: int = 0
    image_size: int = 128
    n_eval_queries: int = 50  # MMEB-eval queries per task
    n_candidates: int = 16  # retrieval pool per query; cap for VQA answer sets (classification uses all labels)
    n_train_per_task: int = 200  # MMEB-train rows per in-distribution task
    n_muco_images: int = 200  # MuCo lines (one image each)
    k_turns: int = 4  # MuCo pairs per image
    n_mbeir_queries: int = 50  # M-BEIR queries per task
    n_mbeir_negatives: int = 3  # hard negatives per M-BEIR query (also put in the candidate pools)
    noise: int = 6  # background noise amplitude (grey levels)

    def __post_init__(self) -> None:
        checks = {"seed >= 0": self.seed >= 0, "image_size >= 48": self.image_size >= 48,
                  "n_eval_queries >= 1": self.n_eval_queries >= 1, "n_candidates >= 2": self.n_candidates >= 2,
                  "n_train_per_task >= 1": self.n_train_per_task >= 1, "n_muco_images >= 1": self.n_muco_images >= 1,
                  "1 <= k_turns <= 6": 1 <= self.k_turns <= 6, "n_mbeir_queries >= 1": self.n_mbeir_queries >= 1,
                  "1 <= n_mbeir_negatives <= 8": 1 <= self.n_mbeir_negatives <= 8,
                  "0 <= noise <= 30": 0 <= self.noise <= 30}
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"SyntheticConfig: need {', '.join(failed)}")
