"""Every setting of the serving program: environment variables read once into one typed object.

README's "Serving settings" table is `markdown_table()` (a test checks they agree).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from common.paths import OptML


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use; the message names it."""


def _setting(default, *env: str, help: str, shown: str | None = None):
    return field(default=default, metadata={"env": env, "help": help, "shown": shown})


RESERVED_PATHS = ("/ping", "/invocations", "/invocations-response-stream", "/invocations-bidirectional-stream",
                  "/execution-parameters")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    port: int = _setting(8080, "SAGEMAKER_BIND_TO_PORT", help="TCP port to listen on (all interfaces).")
    workers: int | None = _setting(
        None, "MODEL_SERVER_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS",
        shown="one per visible GPU, else 1",
        help="gunicorn worker processes, each with its own copy of the model; with GPUs, worker i is pinned to "
             "visible GPU i mod count.",
    )
    threads: int = _setting(
        16, "SERVE_THREADS",
        help="Request threads per worker: concurrent requests a worker accepts, and so can batch together.",
    )
    timeout_s: int = _setting(
        60, "MODEL_SERVER_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        help="Seconds a request may wait for its transcript before it is answered 503 (raise it for long audio "
             "on async endpoints); also gunicorn's worker heartbeat timeout.",
    )
    max_payload_mb: float = _setting(
        6, "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        help="Largest request body in MB (MiB, 2^20 bytes); bigger bodies get 413 before they are read. SageMaker's "
             "real-time cap is 6; raise it for async inference and batch transform (max 100).",
    )
    batch_transform: bool = _setting(
        False, "SAGEMAKER_BATCH", help="Set by SageMaker batch transform; informational."
    )
    batch_strategy: str = _setting(
        "SINGLE_RECORD", "SAGEMAKER_BATCH_STRATEGY",
        help="BatchStrategy reported by /execution-parameters (one audio file is one record).",
    )
    max_concurrent_transforms: int | None = _setting(
        None, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", shown="workers x threads",
        help="MaxConcurrentTransforms reported by /execution-parameters.",
    )
    chunk_length_s: float = _setting(
        30.0, "SERVE_CHUNK_LENGTH_S",
        help="Audio longer than this is transcribed in overlapping chunks of this length, so memory stays bounded.",
    )
    chunk_stride_s: float = _setting(
        5.0, "SERVE_CHUNK_STRIDE_S",
        help="Overlap on each side of a chunk whose frames are dropped when chunks are joined; must be under a "
             "third of the chunk length.",
    )
    max_audio_s: float = _setting(
        3600.0, "SERVE_MAX_AUDIO_S", help="Longest audio accepted per request, in seconds (after decoding)."
    )
    max_decoded_mb: float = _setting(
        512.0, "SERVE_MAX_DECODED_MB",
        help="Largest decoded audio file in MB (MiB) of float32 samples: channels x rate x seconds x 4 bytes, at "
             "the file's own rate before downmixing; checked from the header before decoding (a small FLAC may "
             "declare an hour of 8 channels at 384 kHz), else while decoding: 413 past it. 1 h of 16 kHz mono is "
             "230 MB; raise it for hour-long 44.1/48 kHz recordings (async inference).",
    )
    body_read_timeout_s: float = _setting(
        10.0, "SERVE_BODY_READ_TIMEOUT_S",
        help="Seconds a client may take between the bytes of its request (headers and body) before the "
             "connection is closed (logged and counted); slow senders never hold a request thread.",
    )
    max_batch_size: int | None = _setting(
        None, "SERVE_MAX_BATCH_SIZE", shown="8 on a GPU, 1 on a CPU",
        help="Most clips or chunks in one forward pass. A CPU is busy with one clip already, so batching there "
             "only adds padding and waiting.",
    )
    max_batch_wait_ms: float = _setting(
        5.0, "SERVE_MAX_BATCH_WAIT_MS",
        help="How long the first queued clip waits for others to join its batch, in milliseconds.",
    )
    gpu_dtype: str = _setting(
        "float16", "SERVE_GPU_DTYPE", help="Weights and activations on a GPU: float16, bfloat16 or float32."
    )
    cpu_bf16: str = _setting(
        "auto", "SERVE_CPU_BF16",
        help="On a CPU: `auto` runs in bfloat16 where the CPU has it natively (AVX512-BF16 or AMX: ~2.8x "
             "faster here, same CER, a few characters differ), else float32; `true` or `false` force it "
             "(`false`: transcripts exactly as float32).",
    )
    language: str | None = _setting(
        None, "SERVE_LANGUAGE", shown="the tokenizer's `target_lang`",
        help="Adapter models (MMS: `adapter.<lang>.safetensors` beside a vocab.json nested by language): the "
             "language of requests that name none (the `language` request option). Unset: the tokenizer's "
             "`target_lang`, or the only language; a model with several and no `target_lang` needs it.",
    )
    max_adapters: int = _setting(
        16, "SERVE_MAX_ADAPTERS",
        help="Adapter languages kept loaded at once (the least recently used is dropped and read again from its "
             "file when asked for).",
    )
    beam_processes: int | None = _setting(
        None, "SERVE_BEAM_PROCESSES", shown="CPU cores / workers - 1, at least 1, at most `SERVE_THREADS`",
        help="Processes per worker that run beam search (the `decoder` request option), so that the forward-pass "
             "thread never waits for it. The default leaves each worker one core for its request threads and "
             "model thread; more processes than request threads would sit idle. They are started (spawned, "
             "never forked: they never import torch or touch CUDA) after the worker forks, each loading the LM "
             "once (a KenLM binary is memory-mapped and shared, an ARPA file is held by every process); for a "
             "model without an LM, on the first `decoder=beam` request.",
    )
    stream_max_sessions: int = _setting(
        16, "SERVE_STREAM_MAX_SESSIONS",
        help="Live transcription (WebSocket `/invocations-bidirectional-stream`): concurrent streams per worker; "
             "one more is answered with an `error` event and close code 1013 (try again later).",
    )
    stream_max_session_s: float = _setting(
        3600.0, "SERVE_STREAM_MAX_SESSION_S",
        help="Longest stream in seconds (wall clock); then its last `final`, an `error` event and close code 1008.",
    )
    stream_idle_timeout_s: float = _setting(
        60.0, "SERVE_STREAM_IDLE_TIMEOUT_S",
        help="A stream that sends no frame for this long gets its last `final`, an `error` event and close code "
             "1008 (SageMaker's pings do not count).",
    )
    stream_max_frame_bytes: int = _setting(
        1048576, "SERVE_STREAM_MAX_FRAME_BYTES",
        help="Largest WebSocket message a stream may send; a bigger one gets an `error` event and close code 1009.",
    )
    stream_step_s: float = _setting(
        0.5, "SERVE_STREAM_STEP_S",
        help="A stream's frames are committed in steps of this many seconds, one sliding window each (shorter: "
             "quicker partials, more forward passes).",
    )
    stream_left_s: float = _setting(
        2.0, "SERVE_STREAM_LEFT_S",
        help="Left context of each sliding window, in seconds of audio before the frames it commits (longer: more "
             "context for each frame, a longer pass per step).",
    )
    stream_right_s: float = _setting(
        0.3, "SERVE_STREAM_RIGHT_S",
        help="Right look-ahead of each sliding window: frames are committed only once this much audio follows them.",
    )
    stream_silence_s: float = _setting(
        0.5, "SERVE_STREAM_SILENCE_S",
        help="A pause this long after speech ends an utterance (heard by Silero VAD, or a run of CTC blank frames "
             "with `SERVE_STREAM_ENDPOINTING=ctc`): its `final` is sent.",
    )
    stream_max_utterance_s: float = _setting(
        30.0, "SERVE_STREAM_MAX_UTTERANCE_S",
        help="An utterance with no such pause is cut at its last word boundary after this many seconds.",
    )
    stream_max_batch_size: int = _setting(
        16, "SERVE_STREAM_MAX_BATCH_SIZE",
        help="Most stream windows in one forward pass (windows of one length share a pass, so batching them adds no "
             "padding, on a CPU too).",
    )
    stream_feature_cache: str = _setting(
        "auto", "SERVE_STREAM_FEATURE_CACHE",
        help="Stream windows reuse the feature encoder's frames (each frame computed once per stream; Wav2Vec2ForCTC "
             "models): `auto` for layer-norm encoders (exact) and group-norm ones (wav2vec2-base layout: normalised "
             "over the stream's running statistics, an approximation measured in bench/README.md), `exact` for "
             "layer-norm encoders only, `off` for whole-window passes.",
    )
    stream_endpointing: str = _setting(
        "vad", "SERVE_STREAM_ENDPOINTING",
        help="What ends a stream's utterance: `vad` (Silero VAD hears `SERVE_STREAM_SILENCE_S` of pause after "
             "speech; docs/streaming.md, Live transcription), `ctc` (that long a run of CTC blanks after speech, the "
             "fallback), `manual` (only the client: our protocol's `end`, the Realtime protocol's commit). A "
             "stream's settings may choose another.",
    )
    stream_vad_threshold: float = _setting(
        0.5, "SERVE_STREAM_VAD_THRESHOLD",
        help="`SERVE_STREAM_ENDPOINTING=vad`: Silero's speech probability at which speech starts (it stops under "
             "this minus 0.15); the Realtime protocol's `server_vad.threshold` default.",
    )
    stream_vad_prefix_padding_s: float = _setting(
        0.3, "SERVE_STREAM_VAD_PREFIX_PADDING_S",
        help="`SERVE_STREAM_ENDPOINTING=vad`: seconds of audio before speech starts that its utterance keeps (the "
             "Realtime protocol's `prefix_padding_ms` default); longer pauses before speech are dropped.",
    )
    stream_max_behind_s: float = _setting(
        30.0, "SERVE_STREAM_MAX_BEHIND_S",
        help="A stream whose audio waits this many seconds for its windows (it is sent faster than it is "
             "transcribed) is closed with an `error` event and close code 1013, instead of its memory growing; "
             "being behind at all is told in partials (`behind_s`) and Realtime `input_audio_buffer.behind` events.",
    )
    log_level: str = _setting("info", "SERVE_LOG_LEVEL", help="gunicorn and application log level.")
    log_format: str = _setting(
        "text", "SERVE_LOG_FORMAT",
        help="Request log lines as `text` (key=value pairs) or `json` (one JSON object per line, for log pipelines).",
    )
    metrics: bool = _setting(
        True, "SERVE_METRICS",
        help="Serve Prometheus metrics (docs/metrics.md) at `SERVE_METRICS_PATH`, which SageMaker's detailed "
             "observability scrapes; `false` answers 404 there.",
    )
    metrics_path: str = _setting("/metrics", "SERVE_METRICS_PATH", help="Path of the Prometheus metrics.")
    opt_ml: Path = _setting(
        Path("/opt/ml"), "OPT_ML", help="Root of the SageMaker tree; the model is read from its `model/`."
    )

    @property
    def model_dir(self) -> Path:
        return OptML(self.opt_ml).model_dir

    def batch_size_on(self, device_type: str) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 8 if device_type == "cuda" else 1

    def beam_processes_for(self, workers: int, cores: int | None = None) -> int:
        """SERVE_BEAM_PROCESSES, or the default for `workers` workers sharing `cores` CPU cores (default: the
        cores this process may run on)."""
        if self.beam_processes is not None:
            return self.beam_processes
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(self.threads, cores // max(1, workers) - 1))

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @property
    def transform_payload_mb(self) -> int:
        """MaxPayloadInMB for /execution-parameters: CreateTransformJob takes a whole number of MB from 1 to 100
        (0 would mean no limit), never more than this server accepts (its MB are MiB, larger than SageMaker's)."""
        return max(1, min(100, int(self.max_payload_mb)))

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            for name in f.metadata["env"]:
                raw = environ.get(name)
                if raw is not None and raw.strip() != "":
                    values[f.name] = _parse(f, name, raw.strip())
                    break
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        need(0 < self.port < 65536, f"SAGEMAKER_BIND_TO_PORT={self.port} is not a TCP port")
        need(self.workers is None or self.workers >= 1, "MODEL_SERVER_WORKERS must be at least 1")
        need(self.threads >= 1, "SERVE_THREADS must be at least 1")
        need(self.timeout_s >= 1, "MODEL_SERVER_TIMEOUT must be at least 1 second")
        need(self.max_payload_mb > 0, "SAGEMAKER_MAX_PAYLOAD_IN_MB must be positive")
        need(not self.batch_transform or self.max_payload_mb >= 1,
             "SAGEMAKER_MAX_PAYLOAD_IN_MB must be at least 1 in batch transform (MaxPayloadInMB is whole MB)")
        need(self.batch_strategy in ("SINGLE_RECORD", "MULTI_RECORD"),
             "SAGEMAKER_BATCH_STRATEGY must be SINGLE_RECORD or MULTI_RECORD")
        need(self.max_concurrent_transforms is None or self.max_concurrent_transforms >= 1,
             "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS must be at least 1")
        need(self.chunk_length_s >= 1, "SERVE_CHUNK_LENGTH_S must be at least 1 second")
        need(0 <= self.chunk_stride_s < self.chunk_length_s / 3,
             "SERVE_CHUNK_STRIDE_S must be at least 0 and under a third of SERVE_CHUNK_LENGTH_S")
        need(self.max_audio_s > 0, "SERVE_MAX_AUDIO_S must be positive")
        need(self.max_decoded_mb > 0, "SERVE_MAX_DECODED_MB must be positive")
        need(self.body_read_timeout_s > 0, "SERVE_BODY_READ_TIMEOUT_S must be positive")
        need(self.max_batch_size is None or self.max_batch_size >= 1, "SERVE_MAX_BATCH_SIZE must be at least 1")
        need(self.max_batch_wait_ms >= 0, "SERVE_MAX_BATCH_WAIT_MS must be at least 0")
        need(self.cpu_bf16 in ("auto", "true", "false"), "SERVE_CPU_BF16 must be auto, true or false")
        need(self.gpu_dtype in ("float16", "bfloat16", "float32"),
             "SERVE_GPU_DTYPE must be float16, bfloat16 or float32")
        need(self.max_adapters >= 1, "SERVE_MAX_ADAPTERS must be at least 1")
        need(self.beam_processes is None or self.beam_processes >= 1, "SERVE_BEAM_PROCESSES must be at least 1")
        need(self.language is None or bool(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.language)),
             "SERVE_LANGUAGE must be a language code such as eng or fra (letters, digits, - and _)")
        need(self.stream_max_sessions >= 1, "SERVE_STREAM_MAX_SESSIONS must be at least 1")
        need(self.stream_max_session_s > 0, "SERVE_STREAM_MAX_SESSION_S must be positive")
        need(self.stream_idle_timeout_s > 0, "SERVE_STREAM_IDLE_TIMEOUT_S must be positive")
        need(self.stream_max_frame_bytes >= 1024, "SERVE_STREAM_MAX_FRAME_BYTES must be at least 1024")
        need(0.02 <= self.stream_step_s <= 10, "SERVE_STREAM_STEP_S must be between 0.02 and 10 seconds")
        need(0 <= self.stream_left_s <= 30, "SERVE_STREAM_LEFT_S must be between 0 and 30 seconds")
        need(0 <= self.stream_right_s <= 10, "SERVE_STREAM_RIGHT_S must be between 0 and 10 seconds")
        need(self.stream_silence_s >= 0.1, "SERVE_STREAM_SILENCE_S must be at least 0.1 seconds")
        need(self.stream_max_utterance_s >= 2 * self.stream_step_s + 1,
             "SERVE_STREAM_MAX_UTTERANCE_S must be at least 1 s more than two steps (SERVE_STREAM_STEP_S)")
        need(self.stream_endpointing in ("vad", "ctc", "manual"), "SERVE_STREAM_ENDPOINTING must be vad, ctc or manual")
        need(0 < self.stream_vad_threshold < 1, "SERVE_STREAM_VAD_THRESHOLD must be between 0 and 1")
        need(0 <= self.stream_vad_prefix_padding_s <= 5, "SERVE_STREAM_VAD_PREFIX_PADDING_S must be between 0 and 5 "
                                                          "seconds")
        need(self.stream_max_behind_s >= 1, "SERVE_STREAM_MAX_BEHIND_S must be at least 1 second")
        need(self.stream_max_batch_size >= 1, "SERVE_STREAM_MAX_BATCH_SIZE must be at least 1")
        need(self.stream_feature_cache in ("auto", "exact", "off"), "SERVE_STREAM_FEATURE_CACHE must be auto, exact "
             "or off")
        need(self.log_format in ("text", "json"), "SERVE_LOG_FORMAT must be text or json")
        need(self.metrics_path.startswith("/") and self.metrics_path not in RESERVED_PATHS
             and bool(re.fullmatch(r"/[A-Za-z0-9._~/-]{1,100}", self.metrics_path)),
             f"SERVE_METRICS_PATH must be a path such as /metrics, other than {', '.join(RESERVED_PATHS)}")
        need(self.log_level in ("debug", "info", "warning", "error", "critical"),
             "SERVE_LOG_LEVEL must be debug, info, warning, error or critical")


def _parse(f: dataclasses.Field, name: str, raw: str):
    kind = f.type.split(" | ")[0]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
        if kind == "bool":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if kind == "Path":
            return Path(raw)
        if f.name == "cpu_bf16":  # true/false spelled as for the boolean settings, or auto
            low = raw.lower()
            return "true" if low in _TRUE else "false" if low in _FALSE else low
        return raw.lower() if f.name in ("log_level", "log_format") else raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None


def markdown_table() -> str:
    """The settings as a Markdown table: variable(s), default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        names = " or ".join(f"`{n}`" for n in f.metadata["env"])
        default = f.metadata["shown"] or ("none" if f.default is None else f.default)
        if isinstance(default, bool):
            default = "true" if default else "false"
        rows.append(f"| {names} | {default} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
