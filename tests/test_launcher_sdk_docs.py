"""The docs' Python blocks that use the SageMaker SDK v3, checked against the SDK's own signatures: classes,
methods and keyword arguments (tests/test_docs_blocks.py checks every other block; the SDK is installed in the
launcher's .venv-launch only, where ./test.sh runs this file)."""
from __future__ import annotations

import pytest

from docs_helpers import all_blocks, check_python, imports_sdk

SDK_BLOCKS = [b for b in all_blocks() if b.lang == "python" and b.kind in {"aws", "flags"} and imports_sdk(b.code)]


def test_the_docs_have_sdk_blocks():
    assert SDK_BLOCKS, "no SageMaker SDK block found in README.md or docs/"


@pytest.mark.parametrize("block", SDK_BLOCKS, ids=[b.where for b in SDK_BLOCKS])
def test_sdk_blocks_match_the_sdk(block):
    check_python(block.code)


def test_a_stale_sdk_call_fails():
    stale = "from sagemaker.core.resources import Endpoint\ne = Endpoint(endpoint_name='x')\n" \
            "e.invoke(body=b'', serializer_type='json')\n"
    with pytest.raises(AssertionError, match="no parameter serializer_type"):
        check_python(stale)
    with pytest.raises(ModuleNotFoundError):
        check_python("from sagemaker.predictor import Predictor\np = Predictor('x')\np.predict(b'')\n")
