"""Rewards for policy-gradient training of embedders (TRL reward functions)."""

from .grace import GraceReward, GraceRewardConfig, grace_rewards, group_advantages

__all__ = ["GraceReward", "GraceRewardConfig", "grace_rewards", "group_advantages"]


def __getattr__(name: str):  # submodules load on first use: ``mmembed.rewards.<module>`` after ``import mmembed``
    from .._lazy import submodule

    return submodule(__name__, name)
