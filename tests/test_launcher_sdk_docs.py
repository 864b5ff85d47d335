"""The docs' Python blocks that use the SageMaker SDK v3, checked against the SDK's own signatures: classes,
methods and keyword arguments (tests/test_docs_blocks.py checks every other block; the SDK is installed in the
launcher's .venv-launch only, where ./test.sh runs this file)."""
from __future__ import annotations

import re

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


RUN_BLOCKS = [b for b in SDK_BLOCKS if "invoke(" in b.code]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_sdk_invoke_blocks_run_against_a_stand_in(block, tmp_path):
    """The SDK block, run as written, reaches InvokeEndpoint with the options it sets and reads the answer's
    `text` (a stand-in that answers as the server does; tests/test_docs_blocks.py runs boto3's blocks against
    the real server, which needs torch, not in this environment)."""
    import http.server
    import json
    import os
    import subprocess
    import sys
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"path": self.path, "type": self.headers.get("Content-Type"),
                         "attributes": self.headers.get("X-Amzn-SageMaker-Custom-Attributes")})
            body = json.dumps({"text": "a transcript"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    for name in ("clip.wav", "clip.flac"):
        (tmp_path / name).write_bytes(b"RIFF")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=f"http://127.0.0.1:{httpd.server_port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        run = subprocess.run([sys.executable, "-"], input=block.code, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        httpd.shutdown()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "a transcript"
    assert seen and all(c["path"] == "/endpoints/asr-demo/invocations" for c in seen), seen
    for attributes in re.findall(r'custom_attributes="([^"]+)"', block.code):
        assert any(c["attributes"] == attributes for c in seen), (attributes, seen)
