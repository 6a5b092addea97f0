"""Test data shared by test folders (a plain module: every folder's conftest.py is named `conftest`)."""

# A profile for the tiny 32x32 test model: ONNX Runtime fp32, one thread, generous budgets
# (the test machine is shared with a benchmark).
TEST_PROFILE = """\
name = "test-cpu"
description = "tests: the tiny model on ONNX Runtime"
arch = "x86_64"
backends = ["onnxruntime"]
precisions = ["fp32"]
threads = 1
input_size = [32, 32]
latency_budget_ms = 500.0
memory_budget_mb = 4096
health_timeout_s = 120.0
"""
