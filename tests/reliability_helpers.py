"""Reliability tooling shared by tests/test_reliability*.py and the longer runs in reliability/.

A tiny model built without any data set, the serving program started natively with its workers observable
(pids, RSS, deaths in the gunicorn log), a load client, and hypothesis strategies for hostile request bodies.
Everything talks to 127.0.0.1 only.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import ROOT, free_port, program_env  # noqa: F401  (re-exported for reliability/)
from serve_helpers import Server, encode

from common import mediatypes, modeldir

ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


def tiny_model(dest: Path, seed: int = 0) -> Path:
    """A random tiny Wav2Vec2ForCTC + processor (letters vocabulary) saved as training saves it."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from common import text

    torch.manual_seed(seed)
    processor = modeldir.make_processor(text.build_vocab([ALPHABET + " "]))
    cfg = modeldir.tiny_config(len(processor.tokenizer), processor.tokenizer.pad_token_id)
    modeldir.save(dest, Wav2Vec2ForCTC(cfg).eval(), processor)
    return dest


def opt_ml_with_model(root: Path, model_dir: Path) -> Path:
    """An /opt/ml tree whose model/ links the model (as SageMaker extracts model.tar.gz there)."""
    (root / "model").parent.mkdir(parents=True, exist_ok=True)
    (root / "model").symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return root


def speechlike(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """Deterministic voiced-sounding audio (harmonics under a syllable envelope); no data set needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.3 * t + rng.uniform(0, 6))
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


# The serving program under observation ---------------------------------------------------------------------
class Observed(Server):
    """serve/serve with its gunicorn workers visible: pids, RSS, and deaths reported by the master."""

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def wait_workers(self, n: int, timeout_s: float = 120) -> list[int]:
        """Wait until n workers have each logged 'model loaded' since start; their pids."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            loaded = set(map(int, re.findall(r"\[(\d+)\] \[INFO\] model loaded", self.log())))
            if len(pids) == n and set(pids) <= loaded:
                return pids
            time.sleep(0.2)
        raise TimeoutError(f"{n} loaded workers not seen in {timeout_s} s:\n{self.log()[-3000:]}")

    def deaths(self) -> list[str]:
        """Log lines in which gunicorn reports a worker that died, timed out or was killed."""
        pattern = re.compile(r"WORKER TIMEOUT|Worker \(pid:\d+\) (was sent|exited)|Worker exiting|"
                             r"Traceback|Segmentation fault|out of memory", re.I)
        return [line for line in self.log().splitlines() if pattern.search(line)]

    def app_errors(self) -> list[str]:
        """5xx answers and unexpected exceptions logged by the app."""
        return [line for line in self.log().splitlines()
                if "internal error" in line or re.search(r"status=5\d\d", line)]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


# HTTP ---------------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    seconds: float
    error: str = ""  # connection-level failure (no HTTP answer)


def send(port: int, body: bytes, headers: dict[str, str], path: str = "/invocations", method: str = "POST",
         timeout_s: float = 60) -> Answer:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if not any(k.lower() == "content-length" for k in headers):
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413, 417) and closed: its answer may still be readable
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, data, resp.getheader("Content-Type", ""), time.monotonic() - started)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, b"", "", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def json_error(answer: Answer) -> str | None:
    """The {"error": ...} message of an answer, or None when the body is not that shape."""
    if not answer.content_type.startswith("application/json"):
        return None
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):  # OpenAI's shape on /v1/ routes: {"error": {"message", "type", "param", "code"}}
        error = error.get("message") if {"message", "type", "param", "code"} <= set(error) else None
    return error if isinstance(error, str) else None


def openai_error(answer: Answer) -> bool:
    """Whether an answer's body is OpenAI's error shape: {"error": {"message": str, "type", "param", "code"}}."""
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error) \
        and isinstance(error["message"], str)


_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>|object at 0x[0-9a-fA-F]+")  # no error text may hold one


def acceptable(answer: Answer) -> str | None:
    """Why an answer breaks the contract (2xx, or 4xx with a JSON error), or None when it keeps it."""
    if answer.error:
        return f"no HTTP answer: {answer.error}"
    if 200 <= answer.status < 300:
        return None
    if 400 <= answer.status < 500:
        if not json_error(answer):
            return f"{answer.status} without a JSON error: {answer.body[:200]!r}"
        if _REPR.search(answer.body.decode(errors="replace")):
            return f"{answer.status} whose error text holds a Python object repr: {answer.body[:300]!r}"
        return None
    return f"status {answer.status}: {answer.body[:300]!r}"


# Load -----------------------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    sent: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what)
    ok_after: list[float] = field(default_factory=list)  # monotonic completion times of good answers

    def percentile_ms(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        if not xs:
            return float("nan")
        return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] * 1000 if len(xs) > 1 else xs[0] * 1000


def run_load(port: int, bodies: list[tuple[bytes, str, str]], total: int, concurrency: int,
             max_s: float = 600, during=None) -> LoadResult:
    """`total` requests, cycling through bodies (body, content type, expected text), `concurrency` at a time.

    A request fails when it gets no answer, a non-200, or a transcript different from the expected one.
    `during(result)` runs in its own thread while the load runs (fault injection). Stops at max_s.
    """
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(total))
    stop_at = time.monotonic() + max_s

    def worker():
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body, ctype, expected = bodies[i % len(bodies)]
            a = send(port, body, {"Content-Type": ctype})
            done = time.monotonic()
            with lock:
                result.sent += 1
                if a.status == 200 and json.loads(a.body).get("text") == expected:
                    result.latencies_s.append(a.seconds)
                    result.ok_after.append(done)
                else:
                    result.failures.append((done, a.error or f"{a.status}: {a.body[:200]!r}"))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    side = threading.Thread(target=during, args=(result,), daemon=True) if during else None
    for t in threads:
        t.start()
    if side:
        side.start()
    for t in threads:
        t.join(max(1.0, stop_at - time.monotonic() + 60))
    if side:
        side.join(60)
    result.wall_s = time.monotonic() - started
    return result


def mixed_bodies(port: int, lengths_s: list[float]) -> list[tuple[bytes, str, str]]:
    """WAV, FLAC and JSON bodies of the given lengths, each with the transcript the server gives it alone."""
    out = []
    for i, seconds in enumerate(lengths_s):
        audio = speechlike(seconds, seed=i)
        kind = i % 3
        if kind == 0:
            body, ctype = encode(audio, 16_000), "audio/wav"
        elif kind == 1:
            body, ctype = encode(audio, 16_000, "FLAC"), "audio/flac"
        else:
            body = json.dumps({"audio": base64.b64encode(encode(audio, 16_000)).decode()}).encode()
            ctype = "application/json"
        a = send(port, body, {"Content-Type": ctype})
        if a.status != 200:
            raise RuntimeError(f"reference request failed: {a.status} {a.body[:300]!r}")
        out.append((body, ctype, json.loads(a.body)["text"]))
    return out


def raw_exchange(port: int, data: bytes, timeout_s: float = 30) -> bytes:
    """Send raw bytes on a fresh connection, half-close, and read whatever comes back. A server that answers
    and closes before the whole body is sent (a 413 for a body over the cap) may stop the sending half-way:
    what it answered is still read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server closed its side first
            pass
        chunks = []
        while True:
            try:
                piece = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not piece:
                break
            chunks.append(piece)
        return b"".join(chunks)


# Hostile inputs (hypothesis strategies) ----------------------------------------------------------------------
def audio_files() -> dict[str, bytes]:
    """Small valid encoded files to mutate: WAV (PCM16, float, 8-bit, stereo, odd rates), FLAC, OGG."""
    a = speechlike(0.4)
    stereo = np.stack([a, -a], axis=1)
    return {
        "wav16": encode(a, 16_000),
        "wavf32": encode(a, 16_000, "WAV", "FLOAT"),
        "wav_u8_8k": encode(a[::2], 8_000, "WAV", "PCM_U8"),
        "wav_stereo_44k": encode(np.repeat(stereo, 3, axis=0)[: int(0.4 * 44_100)], 44_100),
        "flac": encode(a, 16_000, "FLAC"),
        "ogg": encode(a, 16_000, "OGG", "VORBIS"),
        "wav_many_channels": encode(np.tile(a[:800, None], (1, 64)), 16_000),
    }


def wav_header(rate: int, channels: int, bits: int, fmt: int, data: bytes, declared: int | None = None) -> bytes:
    """A hand-made RIFF/WAVE header with any values, including ones no writer would produce."""
    block = max(0, channels * bits // 8) & 0xFFFF
    fmt_chunk = (fmt.to_bytes(2, "little") + (channels & 0xFFFF).to_bytes(2, "little")
                 + (rate & 0xFFFFFFFF).to_bytes(4, "little") + ((rate * block) & 0xFFFFFFFF).to_bytes(4, "little")
                 + block.to_bytes(2, "little") + (bits & 0xFFFF).to_bytes(2, "little"))
    size = len(data) if declared is None else declared
    body = (b"WAVE" + b"fmt " + len(fmt_chunk).to_bytes(4, "little") + fmt_chunk
            + b"data" + (size & 0xFFFFFFFF).to_bytes(4, "little") + data)
    return b"RIFF" + (len(body) & 0xFFFFFFFF).to_bytes(4, "little") + body


CONTENT_TYPES = [
    "audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "audio/ogg", "audio/mpeg",
    "audio/x-audio", "application/octet-stream", "application/json", "application/json; charset=utf-8",
    "AUDIO/WAV; rate=16000", "text/plain", "text/csv", "multipart/form-data; boundary=x", "", "*/*",
    "application/x-npy", "audio/wav;;;;", "application/json; charset=latin-1",
]


AUDIO_TYPES = list(mediatypes.AUDIO) + ["Audio/WAV; codecs=1"]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]


def strategies(multipart: bool = False):
    """hypothesis strategies: one `request()` draws (content type, extra headers, query string, body, label);
    multipart: mostly OpenAI multipart forms (for POST /v1/audio/transcriptions)."""
    from hypothesis import strategies as st

    files = audio_files()
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
        st.sampled_from([0, 1, -1, 1e308, -1e308, 5e-324, 2 ** 63, 2 ** 64, 16000.5]),
    )
    json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
    json_values = st.recursive(
        json_scalars,
        lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=5)),
        max_leaves=30,
    )
    rates = st.one_of(numbers, st.sampled_from([1, 999, 1000, 8000, 16000, 384000, 384001, 10 ** 9]),
                      st.text(max_size=6), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))

    @st.composite
    def seed_json(draw):
        n = draw(st.integers(0, 3000))
        kind = draw(st.sampled_from(["floats", "frames", "nested", "mixed", "empty_rows"]))
        if kind == "floats":
            arr = draw(st.lists(numbers, min_size=0, max_size=40)) + [0.01] * n
        elif kind == "frames":
            ch = draw(st.integers(1, 300))
            arr = [[0.1] * ch for _ in range(draw(st.integers(1, 400)))]
        elif kind == "nested":
            arr = [[[0.1, 0.2]]] * draw(st.integers(1, 50))
        elif kind == "empty_rows":
            arr = [[] for _ in range(draw(st.integers(1, 50)))]
        else:
            arr = [0.1, [0.2], "x", None, True][: draw(st.integers(1, 5))] * 10
        item = {"speech_array": arr, "sampling_rate": draw(rates)}
        if draw(st.booleans()):
            item["timestamps"] = draw(json_scalars)
        return json.dumps(item, allow_nan=True).encode(), "json-seed"

    @st.composite
    def b64_json(draw):
        payload = draw(mutated_audio())[0]
        enc = base64.b64encode(payload).decode()
        if draw(st.booleans()):
            cut = draw(st.integers(0, len(enc)))
            enc = enc[:cut] + draw(st.text(alphabet="=+/-_ \n", max_size=3))
        doc = {"audio": enc} if draw(st.booleans()) else [{"audio": enc}] * draw(st.integers(1, 4))
        return json.dumps(doc).encode(), "json-base64"

    @st.composite
    def deep_json(draw):
        depth = draw(st.sampled_from([10, 100, 1000, 5000, 20000, 100000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode(), f"json-deep-{depth}"

    @st.composite
    def huge_json(draw):
        kind = draw(st.sampled_from(["long_list", "long_string", "many_keys", "batch"]))
        if kind == "long_list":
            return ("[" + ",".join(["{}"] * 200_000) + "]").encode(), "json-huge-list"
        if kind == "long_string":
            return json.dumps({"audio": "A" * 4_000_000}).encode(), "json-huge-string"
        if kind == "many_keys":
            return json.dumps({f"k{i}": i for i in range(100_000)}).encode(), "json-many-keys"
        item = {"speech_array": [0.01] * 1600, "sampling_rate": 16000}
        return json.dumps([item] * draw(st.integers(50, 400))).encode(), "json-big-batch"

    @st.composite
    def mutated_audio(draw):
        name = draw(st.sampled_from(sorted(files)))
        data = bytearray(files[name])
        how = draw(st.sampled_from(["as_is", "truncate", "bitflip", "splice", "header_bytes"]))
        if how == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif how == "bitflip":
            for _ in range(draw(st.integers(1, 20))):
                if data:
                    i = draw(st.integers(0, len(data) - 1))
                    data[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "splice":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=64))
        elif how == "header_bytes" and len(data) > 64:
            i = draw(st.integers(0, 63))
            data[i:i + 4] = draw(st.binary(min_size=4, max_size=4))
        return bytes(data), f"{name}-{how}"

    @st.composite
    def crafted_wav(draw):
        rate = draw(st.sampled_from([0, 1, 999, 1000, 8000, 16000, 44100, 384000, 384001, 2 ** 31, 2 ** 32 - 1]))
        channels = draw(st.sampled_from([0, 1, 2, 8, 255, 1024, 65535]))
        bits = draw(st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 65535]))
        fmt = draw(st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 2]))
        kind = draw(st.sampled_from(["zeros", "nan", "inf", "random"]))
        n = draw(st.integers(0, 4096))
        if kind == "zeros":
            data = bytes(n)
        elif kind == "nan":
            data = np.full(n // 4, np.nan, np.float32).tobytes()
        elif kind == "inf":
            data = np.full(n // 4, np.inf, np.float32).tobytes()
        else:
            data = draw(st.binary(max_size=4096))
        declared = draw(st.one_of(st.none(), st.sampled_from([0, 1, 0xFFFFFFFF, 2 ** 31])))
        return wav_header(rate, channels, bits, fmt, data, declared), f"wav-crafted-{kind}"

    boundary = "fuzzboundary"
    form_names = st.sampled_from(["response_format", "timestamp_granularities[]", "stream", "temperature", "model",
                                  "language", "prompt", "decoder", "beam_width", "hotwords[]", "segments",
                                  "confidence", "max_lines", "max_line_chars", "include[]", "file", "x"])
    form_values = st.one_of(st.sampled_from(["json", "text", "srt", "vtt", "verbose_json", "word", "segment", "true",
                                             "false", "0", "1.5", "-1", "nan", "beam", "greedy", "eng", ""]),
                            st.text(max_size=40))

    @st.composite
    def multipart_form(draw):
        # OpenAI's body (POST /v1/audio/transcriptions, and /invocations): a file part and fields, sometimes broken.
        import urllib3

        payload, name = draw(st.one_of(mutated_audio(), crafted_wav(), st.deferred(lambda: float_wav),
                                       st.deferred(lambda: random_bytes)))
        fields = [("file", ("a.wav", payload, "audio/wav"))] if draw(st.integers(0, 5)) else []
        fields += draw(st.lists(st.tuples(form_names, form_values), max_size=4))
        body, _ = urllib3.encode_multipart_formdata(fields, boundary=boundary)
        if draw(st.integers(0, 4)) == 0:
            body = body[: draw(st.integers(0, len(body)))]
        return body, f"multipart-{name}"

    float_wav = st.sampled_from([np.nan, np.inf, -np.inf, 1e30]).map(
        lambda v: (encode(np.full(4000, v, np.float32), 16_000, "WAV", "FLOAT"), "wav-float-nonfinite"))
    random_bytes = st.binary(max_size=2048).map(lambda b: (b, "random-bytes"))

    bodies = st.one_of(mutated_audio(), crafted_wav(), float_wav, seed_json(), b64_json(), deep_json(),
                       huge_json(), json_values.map(lambda v: (json.dumps(v).encode(), "json-random")),
                       random_bytes, multipart_form())
    if multipart:
        plain = bodies  # one_of would flatten its branches: 3 in 4 draws are forms
        bodies = st.integers(0, 3).flatmap(lambda k: multipart_form() if k else plain)
    # Expect is rare: any value but 100-continue is answered 417 by gunicorn before the app sees the body.
    header_names = st.sampled_from(["Accept"] * 3 + ["X-Amzn-RequestId", "X-Request-Id",
                                    "X-Amzn-SageMaker-Custom-Attributes", "Accept-Encoding", "Content-Encoding",
                                    "Transfer-Encoding-X", "X-Forwarded-For", "Accept-Charset", "X-Junk"]
                                   + ["Expect"])
    header_values = st.one_of(
        st.sampled_from(["text/plain", "application/json", "*/*", "text/plain;q=0.1, application/json;q=0.9",
                         "gzip", "deflate", "100-continue", "audio/wav", ""]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    )
    query = st.one_of(st.just(""), st.sampled_from(["?timestamps=true", "?timestamps=maybe", "?timestamps=",
                                                     "?timestamps=1&timestamps=0", "?%ff%fe=\x7f", "?a=" + "b" * 3000]),
                      st.text(alphabet="?=&%abctimesp01", max_size=40))

    @st.composite
    def request(draw):
        body, label = draw(bodies)
        # Mostly a content type that reaches the body's decoder, so the decoders (not the 415) get fuzzed.
        pick = draw(st.sampled_from(["matching"] * 6 + ["listed"] * 2 + ["random"]))
        if pick == "matching" and label.startswith("multipart"):
            ctype = f"multipart/form-data; boundary={boundary}"
        elif pick == "matching":
            ctype = draw(st.sampled_from(JSON_TYPES if label.startswith("json") else AUDIO_TYPES))
        elif pick == "listed":
            ctype = draw(st.sampled_from(CONTENT_TYPES))
        else:
            ctype = draw(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60))
        headers = draw(st.dictionaries(header_names, header_values, max_size=3))
        return ctype, headers, draw(query), body, label

    return request()


def percent_quote(q: str) -> str:
    """Make a drawn query string safe for the request line (no spaces or control characters), starting with ?."""
    q = q if q.startswith("?") or not q else "?" + q
    return "".join(c if 0x21 <= ord(c) <= 0x7E else f"%{ord(c):02X}" for c in q)


@dataclass
class FuzzReport:
    tried: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def fuzz(port: int, max_examples: int, max_s: float, seed: int = 0,
         stop: threading.Event | None = None, path: str = "/invocations") -> FuzzReport:
    """Send hypothesis-drawn hostile requests to `path` until max_examples or max_s; record every broken answer.

    Failures are collected rather than raised, so one run reports all of them (and how many inputs it tried).
    """
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings

    report = FuzzReport()
    stop_at = time.monotonic() + max_s

    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategies(multipart=path.startswith("/v1/")))
    def one(req):
        if time.monotonic() > stop_at or (stop is not None and stop.is_set()):
            raise _TimeUp  # ends the run; with only the generate phase hypothesis does not shrink it
        ctype, headers, query, body, label = req
        h = dict(headers)
        if ctype:
            h["Content-Type"] = ctype
        a = send(port, body, h, path=path + percent_quote(query))
        report.tried += 1
        report.by_status[a.status] = report.by_status.get(a.status, 0) + 1
        report.by_label[label] = report.by_label.get(label, 0) + 1
        why = acceptable(a)
        # 417 (an Expect other than 100-continue) is answered by the worker before any route (serve/worker.py).
        if not why and path.startswith("/v1/") and a.status >= 400 and a.status != 417 and not openai_error(a):
            why = f"{a.status} not in OpenAI's error shape: {a.body[:200]!r}"
        if why:
            report.problems.append(f"{label} ctype={ctype!r} query={query!r} headers={headers!r} "
                                   f"body[:80]={body[:80]!r} ({len(body)} bytes): {why}")

    try:
        one()
    except _TimeUp:
        pass
    return report


class _TimeUp(Exception):
    pass


def model_load_seconds(log: str) -> float:
    """The slowest 'model loaded ... in N s' the workers logged."""
    found = [float(s) for s in re.findall(r"model loaded from .* in ([\d.]+) s", log)]
    return max(found) if found else float("nan")


def reference_text(model_dir: Path):
    """transformers' own path (processor -> model -> batch_decode of the argmax), in this process, less the
    special tokens' text."""
    import torch

    model, processor = modeldir.load(model_dir)
    model.eval()
    tok = processor.tokenizer
    specials = sorted(set(tok.all_special_tokens) - {tok.word_delimiter_token}, key=len, reverse=True)

    def text(audio: np.ndarray) -> str:
        with torch.inference_mode():
            inputs = processor(audio, sampling_rate=16_000, return_tensors="pt")
            decoded = processor.batch_decode(model(**inputs).logits.argmax(-1))[0]
        for special in specials:  # transcripts never contain <s>, </s>, [UNK], [PAD]
            decoded = decoded.replace(special, "")
        return decoded.strip()

    return text


# Faults in serving ---------------------------------------------------------------------------------------------
def new_loaded_worker(srv: Observed, old: list[int]) -> int | None:
    for pid in srv.worker_pids():
        if pid not in old and re.search(rf"\[{pid}\] \[INFO\] model loaded", srv.log()):
            return pid
    return None


def kill_worker_under_load(srv: Observed, bodies, total: int, concurrency: int, kill_after: int) -> dict:
    """SIGKILL one worker after `kill_after` answers; probe /ping every 0.1 s until the replacement has loaded.

    Returns the load result and figures: when it was killed, how long until /ping answered 200 again (0 when
    it never stopped) and until the replacement worker had loaded its model.
    """
    before = srv.worker_pids()
    victim = before[0]
    fig: dict = {"victim": victim, "ping_statuses": []}

    def fault(result: LoadResult):
        while result.sent < kill_after:
            time.sleep(0.02)
        fig["killed_at"] = killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        down_since = None
        deadline = killed + 180
        while time.monotonic() < deadline:
            sent = time.monotonic()
            a = send(srv.port, b"", {}, path="/ping", method="GET", timeout_s=2)
            fig["ping_statuses"].append(a.status)
            fig.setdefault("pings", []).append((round(sent - killed, 2), a.status, a.error[:60], round(a.seconds, 2)))
            if a.status != 200 and down_since is None:
                down_since = time.monotonic()
            if a.status == 200 and down_since is not None and "ping_back_s" not in fig:
                fig["ping_back_s"] = time.monotonic() - killed
            if new_loaded_worker(srv, before) and a.status == 200:
                fig["replaced_s"] = time.monotonic() - killed
                fig.setdefault("ping_back_s", 0.0)
                return
            time.sleep(0.1)

    fig["result"] = run_load(srv.port, bodies, total=total, concurrency=concurrency, max_s=600, during=fault)
    return fig


def sigterm_under_load(srv: Observed, bodies, clients: int, settle_s: float = 0.7) -> dict:
    """`clients` requests at once, SIGTERM `settle_s` later; every answer, exit code and time to exit."""
    answers: list[tuple[Answer, str]] = []
    lock = threading.Lock()

    def client(i):
        body, ctype, expected = bodies[i % len(bodies)]
        a = send(srv.port, body, {"Content-Type": ctype}, timeout_s=40)
        with lock:
            answers.append((a, expected))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(settle_s)
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(40)
    try:
        rc = srv.proc.wait(35)
    except Exception:  # noqa: BLE001 - reported as no exit code
        rc = None
    bad = [(a.status, a.error, a.body[:100]) for a, expected in answers
           if a.status != 200 or json.loads(a.body).get("text") != expected]
    return {"answered": len(answers), "bad": bad, "exit_code": rc, "exit_s": time.monotonic() - signalled}
