"""Every setting of the serving program: environment variables read once into one typed object.

Each field declares its variables, default, bounds and help with common.settings (one boolean rule, one error
wording, one table generator for every program); docs/settings.md's "Serving settings" table is
`markdown_table()` (a test checks they agree). Adding a setting is adding a field; `check()` holds only the
rules that tie two settings together.

One file because the serving program's settings are the fields of one frozen dataclass, read and checked in one
pass and printed as one docs table; it is long because it holds every setting's help text, not logic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from common import settings as common
from common.paths import OptML


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use; the message names it."""


def _setting(default, *env: str, help: str, **declared):
    """A setting read from the environment variables `env` (the first set one wins); `declared`: its bounds,
    choices, pattern or shown default (common.settings.setting)."""
    declared = common.setting(default, help, names=env, **declared)
    return field(default=default, metadata={**declared.metadata, "env": env})  # "env": for dataclass readers


RESERVED_PATHS = ("/ping", "/invocations", "/invocations-response-stream", "/invocations-bidirectional-stream",
                  "/execution-parameters")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LANGUAGE_PATTERN = r"[A-Za-z0-9_-]{1,64}"
LANGUAGE_SAYS = "a language code such as eng or fra (letters, digits, - and _)"


@dataclass(frozen=True)
class Settings:
    port: int = _setting(8080, "SAGEMAKER_BIND_TO_PORT", at_least=1, at_most=65535,
                         help="TCP port to listen on (all interfaces).")
    workers: int | None = _setting(
        None, "MODEL_SERVER_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS", at_least=1,
        shown="one per visible GPU, else 1",
        help="gunicorn worker processes, each with its own copy of the model; with GPUs, worker i is pinned to "
             "visible GPU i mod count.",
    )
    threads: int = _setting(
        16, "SERVE_THREADS", at_least=1,
        help="Request threads per worker: concurrent requests a worker accepts, and so can batch together.",
    )
    timeout_s: int = _setting(
        60, "MODEL_SERVER_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT", at_least=1,
        help="Seconds a request may wait for its transcript before it is answered 503 (raise it for long audio "
             "on async endpoints); also gunicorn's worker heartbeat timeout.",
    )
    max_payload_mb: float = _setting(
        6, "SAGEMAKER_MAX_PAYLOAD_IN_MB", above=0,
        help="Largest request body in MB (MiB, 2^20 bytes); bigger bodies get 413 before they are read. SageMaker's "
             "real-time cap is 6; raise it for async inference and batch transform (max 100).",
    )
    batch_transform: bool = _setting(
        False, "SAGEMAKER_BATCH", help="Set by SageMaker batch transform; informational."
    )
    batch_strategy: str = _setting(
        "SINGLE_RECORD", "SAGEMAKER_BATCH_STRATEGY", choices=("SINGLE_RECORD", "MULTI_RECORD"),
        help="BatchStrategy reported by /execution-parameters (one audio file is one record).",
    )
    max_concurrent_transforms: int | None = _setting(
        None, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", at_least=1, shown="workers x threads",
        help="MaxConcurrentTransforms reported by /execution-parameters.",
    )
    chunk_length_s: float = _setting(
        30.0, "SERVE_CHUNK_LENGTH_S", at_least=1,
        help="Audio longer than this is transcribed in overlapping chunks of this length, so memory stays bounded.",
    )
    chunk_stride_s: float = _setting(
        5.0, "SERVE_CHUNK_STRIDE_S", at_least=0,
        help="Overlap on each side of a chunk whose frames are dropped when chunks are joined; must be under a "
             "third of the chunk length.",
    )
    chunking: str = _setting(
        "vad", "SERVE_CHUNKING", choices=("vad", "fixed"), fold_case=True,
        help="How audio longer than `SERVE_CHUNK_LENGTH_S` is cut: `vad` at the pauses Silero VAD finds (silence "
             "is not sent to the model; a region of speech longer than a chunk is split with the stride; "
             "docs/models.md, Long audio), `fixed` every `SERVE_CHUNK_LENGTH_S`.",
    )
    vad_threshold: float = _setting(
        0.5, "SERVE_VAD_THRESHOLD", above=0, below=1,
        help="`SERVE_CHUNKING=vad`: Silero's speech probability at which speech starts (it ends below this "
             "minus 0.15); lower finds more speech.",
    )
    vad_min_silence_s: float = _setting(
        0.5, "SERVE_VAD_MIN_SILENCE_S", at_least=0, at_most=10,
        help="`SERVE_CHUNKING=vad`: the shortest pause, in seconds, at which audio is cut (shorter pauses stay "
             "inside a chunk).",
    )
    vad_speech_pad_s: float = _setting(
        0.2, "SERVE_VAD_SPEECH_PAD_S", at_least=0, at_most=2,
        help="`SERVE_CHUNKING=vad`: seconds of audio kept on each side of a region of speech.",
    )
    vad_short_audio: bool = _setting(
        False, "SERVE_VAD_SHORT_AUDIO",
        help="`SERVE_CHUNKING=vad`: also cut audio no longer than `SERVE_CHUNK_LENGTH_S` at its pauses (off: "
             "such a clip is transcribed whole, exactly as with `fixed`; measured in bench/README.md).",
    )
    max_audio_s: float = _setting(
        3600.0, "SERVE_MAX_AUDIO_S", above=0, help="Longest audio accepted per request, in seconds (after decoding)."
    )
    max_decoded_mb: float = _setting(
        512.0, "SERVE_MAX_DECODED_MB", above=0,
        help="Largest decoded audio file in MB (MiB) of float32 samples: channels x rate x seconds x 4 bytes, at "
             "the file's own rate before downmixing; checked from the header before decoding (a small FLAC may "
             "declare an hour of 8 channels at 384 kHz), else while decoding: 413 past it. 1 h of 16 kHz mono is "
             "230 MB; raise it for hour-long 44.1/48 kHz recordings (async inference).",
    )
    body_read_timeout_s: float = _setting(
        10.0, "SERVE_BODY_READ_TIMEOUT_S", above=0,
        help="Seconds a client may take between the bytes of its request (headers and body) before the "
             "connection is closed (logged and counted); slow senders never hold a request thread.",
    )
    max_batch_size: int | None = _setting(
        None, "SERVE_MAX_BATCH_SIZE", at_least=1, shown="8 on a GPU, 1 on a CPU",
        help="Most clips or chunks in one forward pass. A CPU is busy with one clip already, so batching there "
             "only adds padding and waiting.",
    )
    max_batch_wait_ms: float = _setting(
        5.0, "SERVE_MAX_BATCH_WAIT_MS", at_least=0,
        help="How long the first queued clip waits for others to join its batch, in milliseconds.",
    )
    gpu_dtype: str = _setting(
        "float16", "SERVE_GPU_DTYPE", choices=("float16", "bfloat16", "float32"),
        help="Weights and activations on a GPU: float16, bfloat16 or float32."
    )
    cpu_bf16: str = _setting(
        "auto", "SERVE_CPU_BF16", choices=("auto", "true", "false"), fold_case=True,
        help="On a CPU: `auto` runs in bfloat16 where the CPU has it natively (AVX512-BF16 or AMX: ~2.8x "
             "faster here, same CER, a few characters differ), else float32; `true` or `false` force it "
             "(`false`: transcripts exactly as float32).",
    )
    language: str | None = _setting(
        None, "SERVE_LANGUAGE", pattern=LANGUAGE_PATTERN, says=LANGUAGE_SAYS, shown="the tokenizer's `target_lang`",
        help="Adapter models (MMS: `adapter.<lang>.safetensors` beside a vocab.json nested by language): the "
             "language of requests that name none (the `language` request option). Unset: the tokenizer's "
             "`target_lang`, or the only language; a model with several and no `target_lang` needs it.",
    )
    max_adapters: int = _setting(
        16, "SERVE_MAX_ADAPTERS", at_least=1,
        help="Adapter languages kept loaded at once (the least recently used is dropped and read again from its "
             "file when asked for).",
    )
    beam_processes: int | None = _setting(
        None, "SERVE_BEAM_PROCESSES", at_least=1, shown="CPU cores / workers - 1, at least 1, at most `SERVE_THREADS`",
        help="Processes per worker that run beam search (the `decoder` request option), so that the forward-pass "
             "thread never waits for it. The default leaves each worker one core for its request threads and "
             "model thread; more processes than request threads would sit idle. They are started (spawned, "
             "never forked: they never import torch or touch CUDA) after the worker forks, each loading the LM "
             "once (a KenLM binary is memory-mapped and shared, an ARPA file is held by every process); for a "
             "model without an LM, on the first `decoder=beam` request.",
    )
    stream_max_sessions: int = _setting(
        16, "SERVE_STREAM_MAX_SESSIONS", at_least=1,
        help="Live transcription (WebSocket `/invocations-bidirectional-stream`): concurrent streams per worker; "
             "one more is answered with an `error` event and close code 1013 (try again later).",
    )
    stream_max_session_s: float = _setting(
        3600.0, "SERVE_STREAM_MAX_SESSION_S", above=0,
        help="Longest stream in seconds (wall clock); then its last `final`, an `error` event and close code 1008.",
    )
    stream_idle_timeout_s: float = _setting(
        60.0, "SERVE_STREAM_IDLE_TIMEOUT_S", above=0,
        help="A stream that sends no frame for this long gets its last `final`, an `error` event and close code "
             "1008 (SageMaker's pings do not count).",
    )
    stream_max_frame_bytes: int = _setting(
        1048576, "SERVE_STREAM_MAX_FRAME_BYTES", at_least=1024,
        help="Largest WebSocket message a stream may send; a bigger one gets an `error` event and close code 1009.",
    )
    stream_step_s: float = _setting(
        0.5, "SERVE_STREAM_STEP_S", at_least=0.02, at_most=10,
        help="A stream's frames are committed in steps of this many seconds, one sliding window each (shorter: "
             "quicker partials, more forward passes).",
    )
    stream_left_s: float = _setting(
        2.0, "SERVE_STREAM_LEFT_S", at_least=0, at_most=30,
        help="Left context of each sliding window, in seconds of audio before the frames it commits (longer: more "
             "context for each frame, a longer pass per step).",
    )
    stream_right_s: float = _setting(
        0.3, "SERVE_STREAM_RIGHT_S", at_least=0, at_most=10,
        help="Right look-ahead of each sliding window: frames are committed only once this much audio follows them.",
    )
    stream_silence_s: float = _setting(
        0.5, "SERVE_STREAM_SILENCE_S", at_least=0.1,
        help="A run of CTC blank frames this long after speech ends an utterance: its `final` is sent.",
    )
    stream_max_utterance_s: float = _setting(
        30.0, "SERVE_STREAM_MAX_UTTERANCE_S",
        help="An utterance with no such pause is cut at its last word boundary after this many seconds.",
    )
    stream_max_batch_size: int = _setting(
        16, "SERVE_STREAM_MAX_BATCH_SIZE", at_least=1,
        help="Most stream windows in one forward pass (windows of one length share a pass, so batching them adds no "
             "padding, on a CPU too).",
    )
    stream_feature_cache: str = _setting(
        "auto", "SERVE_STREAM_FEATURE_CACHE", choices=("auto", "exact", "off"),
        help="Stream windows reuse the feature encoder's frames (each frame computed once per stream; Wav2Vec2ForCTC "
             "models): `auto` for layer-norm encoders (exact) and group-norm ones (wav2vec2-base layout: normalised "
             "over the stream's running statistics, an approximation measured in bench/README.md), `exact` for "
             "layer-norm encoders only, `off` for whole-window passes.",
    )
    log_level: str = _setting("info", "SERVE_LOG_LEVEL", choices=LOG_LEVELS, fold_case=True,
                              help="gunicorn and application log level.")
    log_format: str = _setting(
        "text", "SERVE_LOG_FORMAT", choices=("text", "json"), fold_case=True,
        help="Request log lines as `text` (key=value pairs) or `json` (one JSON object per line, for log pipelines).",
    )
    metrics: bool = _setting(
        True, "SERVE_METRICS",
        help="Serve Prometheus metrics (docs/metrics.md) at `SERVE_METRICS_PATH`, which SageMaker's detailed "
             "observability scrapes; `false` answers 404 there.",
    )
    metrics_path: str = _setting(
        "/metrics", "SERVE_METRICS_PATH", pattern=r"/[A-Za-z0-9._~/-]{1,100}", says="a path such as /metrics",
        help="Path of the Prometheus metrics.",
    )
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
        """The settings from `environ` (default os.environ): a variable set to an empty value is unset. Raises
        SettingsError naming the variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in SPECS.values():
            for name in spec.names:
                raw = environ.get(name)
                if raw is not None and raw.strip() != "":
                    values[spec.name] = _read(spec, raw.strip(), name)
                    break
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every value within its declared bounds, and the rules that tie two settings together."""
        for spec in SPECS.values():
            _read(spec, getattr(self, spec.name), None, typed=True)

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        need(not self.batch_transform or self.max_payload_mb >= 1,
             "SAGEMAKER_MAX_PAYLOAD_IN_MB must be at least 1 in batch transform (MaxPayloadInMB is whole MB)")
        need(self.chunk_stride_s < self.chunk_length_s / 3,
             "SERVE_CHUNK_STRIDE_S must be at least 0 and under a third of SERVE_CHUNK_LENGTH_S")
        need(self.stream_max_utterance_s >= 2 * self.stream_step_s + 1,
             "SERVE_STREAM_MAX_UTTERANCE_S must be at least 1 s more than two steps (SERVE_STREAM_STEP_S)")
        need(self.metrics_path not in RESERVED_PATHS,
             f"SERVE_METRICS_PATH must be a path such as /metrics, other than {', '.join(RESERVED_PATHS)}")


SPECS = common.specs(Settings)


def _read(spec: common.Spec, raw, name: str | None, typed: bool = False):
    try:
        return spec.check(raw, name=name) if typed else spec.read(raw, name=name)
    except common.SettingError as exc:
        raise SettingsError(str(exc)) from None


def markdown_table() -> str:
    """The settings as a Markdown table: variable(s), type, default, meaning."""
    return common.markdown_table(SPECS.values(), first="variable")
