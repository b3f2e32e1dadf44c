"""Shared fixtures: tiny random-weight models of real architectures, built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # avoid OpenMP spin-wait stalls on a busy 2-core machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from mmembed import testing


@pytest.fixture(scope="session", autouse=True)
def _private_torch_extensions(tmp_path_factory):
    """DeepSpeed JIT-builds its CPU shared-memory op under TORCH_EXTENSIONS_DIR, behind a lock file that a killed
    build leaves behind, after which every DeepSpeed launch waits on it forever. Each test session builds its own."""
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_extensions"))


@pytest.fixture(scope="session")
def qwen2_path(tmp_path_factory):
    return testing.build_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def qwen2_emb_path(tmp_path_factory):
    return testing.build_tiny_qwen2(tmp_path_factory.mktemp("qwen2_emb"), emb_token=True)


@pytest.fixture(scope="session")
def qwen2_vl_path(tmp_path_factory):
    return testing.build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"))


@pytest.fixture(scope="session")
def qwen2_5_vl_path(tmp_path_factory):
    return testing.build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="session")
def llava_path(tmp_path_factory):
    return testing.build_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(params=["qwen2_vl", "qwen2_5_vl", "llava"])
def vlm_path(request):
    return request.getfixturevalue(f"{request.param}_path")


@pytest.fixture(scope="session")
def images():
    return testing.sample_images(3)
