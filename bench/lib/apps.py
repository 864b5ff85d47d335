"""The two comparison servers, as WSGI apps for the same gunicorn as ours (bench only, never shipped).

seed_app: the seed's inference path (the AWS blog's predict code): JSON body {"speech_array": [...],
  "sampling_rate": N}, Wav2Vec2Processor.from_pretrained(model_dir) inside every request, fp32, batch 1,
  torch.no_grad, argmax, processor.batch_decode.
pipeline_app: transformers' pipeline("automatic-speech-recognition") on the WAV body, one call per request.
The model directory comes from $BENCH_MODEL_DIR, read in the factory.
"""
from __future__ import annotations

import io
import json
import os

from flask import Flask, jsonify, request


def seed_app() -> Flask:
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    model_dir = os.environ["BENCH_MODEL_DIR"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Wav2Vec2ForCTC.from_pretrained(model_dir).to(device)  # model_fn
    app = Flask("seed")

    @app.get("/ping")
    def ping():
        return "", 200

    @app.post("/invocations")
    def invocations():
        input_data = json.loads(request.data)  # input_fn
        # predict_fn, as the seed wrote it: the processor is loaded for every request.
        processor = Wav2Vec2Processor.from_pretrained(model_dir)
        speech_array = input_data["speech_array"]
        sampling_rate = input_data["sampling_rate"]
        input_values = processor(speech_array, sampling_rate=sampling_rate, return_tensors="pt").input_values
        with torch.no_grad():
            logits = model(input_values.to(device)).logits
        pred_ids = torch.argmax(logits, dim=-1)
        transcript = processor.batch_decode(pred_ids)[0]
        return jsonify(transcript)  # output_fn: json.dumps of the string

    return app


def pipeline_app() -> Flask:
    import numpy as np
    import soundfile as sf
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor, pipeline

    model_dir = os.environ["BENCH_MODEL_DIR"]
    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir)
    pipe = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor, device=0 if torch.cuda.is_available() else -1)
    app = Flask("pipeline")

    @app.get("/ping")
    def ping():
        return "", 200

    @app.post("/invocations")
    def invocations():
        audio, rate = sf.read(io.BytesIO(request.get_data()), dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        result = pipe({"raw": np.ascontiguousarray(audio), "sampling_rate": rate})
        return jsonify(text=result["text"])

    return app
