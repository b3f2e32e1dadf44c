"""Rewards for policy-gradient training of embedders (TRL reward functions)."""

from .grace import GraceReward, GraceRewardConfig, grace_rewards, group_advantages

__all__ = ["GraceReward", "GraceRewardConfig", "grace_rewards", "group_advantages"]
