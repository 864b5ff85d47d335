"""Serving settings from the environment and GPU discovery without CUDA (docs/settings.md's table of them:
tests/test_docs_tables.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT
from serve.gpus import visible_gpus
from serve.settings import Settings, SettingsError


def test_defaults_follow_sagemaker():
    s = Settings.from_env({})
    assert s.port == 8080
    assert s.timeout_s == 60
    assert s.max_payload_bytes == 6 * 1024 * 1024
    assert s.workers is None  # one per GPU, decided at start
    assert s.model_dir == Path("/opt/ml/model")
    assert s.gpu_dtype == "float16" and s.cpu_bf16 == "auto"
    # Batching pays on a GPU; a CPU is busy with one clip already.
    assert (s.batch_size_on("cuda"), s.batch_size_on("cpu")) == (8, 1)
    assert Settings.from_env({"SERVE_MAX_BATCH_SIZE": "4"}).batch_size_on("cpu") == 4


def test_toolkit_names_and_sagemaker_aliases():
    s = Settings.from_env({
        "SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "600", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4", "SERVE_CPU_BF16": "1", "OPT_ML": "/tmp/x",
    })
    assert (s.port, s.workers, s.timeout_s, s.max_payload_mb) == (9000, 3, 600, 100)
    assert s.batch_transform and s.batch_strategy == "MULTI_RECORD" and s.max_concurrent_transforms == 4
    assert s.cpu_bf16 == "true" and s.model_dir == Path("/tmp/x/model")
    # The short toolkit name wins over the SAGEMAKER_ one; empty values mean "unset".
    s = Settings.from_env({"MODEL_SERVER_WORKERS": "2", "SAGEMAKER_MODEL_SERVER_WORKERS": "5",
                           "MODEL_SERVER_TIMEOUT": ""})
    assert s.workers == 2 and s.timeout_s == 60


@pytest.mark.parametrize("name,value,says", [
    ("MODEL_SERVER_WORKERS", "two", "MODEL_SERVER_WORKERS='two'"),
    ("MODEL_SERVER_WORKERS", "0", "MODEL_SERVER_WORKERS=0 must be >= 1"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "0", "SAGEMAKER_MODEL_SERVER_WORKERS=0 must be >= 1"),  # the name given
    ("SAGEMAKER_BIND_TO_PORT", "70000", "SAGEMAKER_BIND_TO_PORT=70000 must be from 1 to 65535"),
    ("SERVE_STREAM_STEP_S", "20", "SERVE_STREAM_STEP_S=20.0 must be from 0.02 to 10"),
    ("SERVE_LANGUAGE", "en us", "SERVE_LANGUAGE='en us' is malformed: expected a language code"),
    ("SERVE_METRICS", "maybe", "SERVE_METRICS='maybe' is not a valid bool: expected true or false"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "nan", "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    ("SERVE_CHUNK_STRIDE_S", "15", "third"),
    ("SERVE_GPU_DTYPE", "int8", "float16"),
    ("SERVE_CPU_BF16", "maybe", "SERVE_CPU_BF16='maybe' must be one of auto, true, false"),
    ("SAGEMAKER_BATCH_STRATEGY", "ALL", "SINGLE_RECORD"),
])
def test_bad_values_name_the_variable(name, value, says):
    with pytest.raises(SettingsError, match=re.escape(says)):
        Settings.from_env({name: value})


@pytest.mark.parametrize("value,want", [
    ("0,1", ["0", "1"]), ("", []), ("-1", []), ("2, 3", ["2", "3"]), ("1,-1,2", ["1"]),
    ("GPU-5e8a1c2d", ["GPU-5e8a1c2d"]),
])
def test_visible_gpus_follow_cuda_visible_devices(value, want):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == want


def test_visible_gpus_without_the_variable_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from serve.gpus import visible_gpus; n = visible_gpus({}); "
            "assert 'torch' not in sys.modules; print(len(n))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 0
