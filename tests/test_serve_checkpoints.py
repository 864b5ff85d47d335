"""Every supported architecture and layout (tests/checkpoints.py) served and transcribed as transformers
itself transcribes it; what must be refused is refused, at start, with the reason."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

import checkpoints
from common import modeldir
from conftest import free_port, program_env
from serve import options
from serve.settings import Settings
from serve_helpers import SERVE, Server, make_opt_ml

RATE = 16_000
HEADER = options.HEADER


def wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def app_client(root, **env):
    """The app as a worker builds it (serve.model.load, then create_app), in this process."""
    from serve import model as model_side
    from serve.app import create_app

    settings = Settings.from_env({"OPT_ML": str(root.parent), "SERVE_CPU_BF16": "false", **env})
    assert settings.model_dir == root
    model = model_side.load(settings)
    return model, create_app(model, settings).test_client()


@pytest.fixture(scope="module")
def opt_ml_of(checkpoint_dirs, tmp_path_factory):
    """kind -> an /opt/ml whose model/ is that kind's directory."""
    def get(kind, layout="flat"):
        root = tmp_path_factory.mktemp(f"optml_{kind}_{layout}")
        return make_opt_ml(root, checkpoint_dirs(kind, layout)) / "model"
    return get


SERVED = [k for k in checkpoints.KINDS if k != "mms"]


@pytest.mark.parametrize("kind", SERVED)
def test_each_architecture_serves_transformers_own_transcript(kind, opt_ml_of, speech_clip):
    model_root = opt_ml_of(kind)
    model, client = app_client(model_root)
    try:
        reply = client.post("/invocations?timestamps=true", data=wav(speech_clip), content_type="audio/wav")
        assert reply.status_code == 200, reply.get_json()
        body = reply.get_json()
        want = checkpoints.reference_text(modeldir.find(model_root), speech_clip)
        assert body["text"] == want
        assert len(set(want.replace(" ", ""))) >= 3, want  # a transcript that could tell a wrong model apart
        assert [w["word"] for w in body["words"]] == body["text"].split()
        model_type = checkpoints.KINDS[kind][0] if checkpoints.KINDS[kind] else "wav2vec2"
        assert model.info.architecture == modeldir.SUPPORTED[model_type]
    finally:
        model.close()


@pytest.mark.parametrize("kind", SERVED)
def test_batched_transcripts_equal_one_clip_and_transformers_own(kind, checkpoint_dirs, speech_clip):
    """Exact batching, every architecture: clips of mixed lengths sharing one forward pass each get the
    transcript they get alone, which is transformers' own one-clip transcript (unpatched model, float32)."""
    import torch

    from serve.contract import Clip
    from serve.model import ServingModel

    model_dir = modeldir.find(checkpoint_dirs(kind))
    model = ServingModel(modeldir.load_checkpoint(model_dir), device=torch.device("cpu"), dtype=torch.float32,
                         max_batch_size=8, max_batch_wait_s=0.5).start()
    try:
        assert model.exact, f"{kind}: not proven exact, so it would batch equal lengths only"
        n = len(speech_clip)
        clips = [speech_clip, speech_clip[: n // 2], np.concatenate([speech_clip, speech_clip[: n // 3]])]
        deadline = time.monotonic() + 300
        alone = [model.transcribe([Clip(c)], deadline=deadline)[0] for c in clips]
        together = model.transcribe([Clip(c) for c in clips], deadline=deadline)
        assert [t.batch_size for t in alone] == [1, 1, 1]
        assert [t.batch_size for t in together] == [3, 3, 3]  # one padded pass for all three
        assert [t.text for t in together] == [t.text for t in alone]
        assert [t.text for t in alone] == [checkpoints.reference_text(model_dir, c) for c in clips]
    finally:
        model.close()


def test_one_top_level_folder_serves_as_is(opt_ml_of, speech_clip):
    """model.tar.gz packed with its folder: /opt/ml/model/<name>/config.json."""
    model_root = opt_ml_of("hubert", "folder")
    assert not (model_root / "config.json").exists()
    model, client = app_client(model_root)
    try:
        assert model.info.architecture == "HubertForCTC"
        reply = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav")
        assert reply.get_json()["text"] == checkpoints.reference_text(modeldir.find(model_root), speech_clip)
    finally:
        model.close()


def test_the_blog_post_model_tar_gz_serves_over_http_and_no_pickle_is_opened(opt_ml_of, tmp_path, speech_clip):
    """The real program on the blog post's training output as SageMaker unpacks it: pytorch_model.bin (old
    weight-norm names) read through weights_only, checkpoint-*/ and training_args.bin ignored, logged."""
    model_root = opt_ml_of("blog")
    srv = Server(model_root.parent, tmp_path / "server.log", MODEL_SERVER_WORKERS="1").wait_ready()
    try:
        reply = srv.post(wav(speech_clip), "audio/wav")
        assert reply.status == 200, reply.body
        assert reply.json["text"] == checkpoints.reference_text(model_root, speech_clip)
        log = srv.log()
        assert "pytorch_model.bin read with torch's weights_only unpickler" in log
        assert "training checkpoints ignored: checkpoint-100, checkpoint-50" in log
        assert "blank = pad token '[PAD]'" in log
    finally:
        srv.stop()
    assert not list(model_root.rglob("UNPICKLED"))


# Adapters (MMS) ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mms(opt_ml_of):
    root = opt_ml_of("mms")
    model, client = app_client(root, SERVE_MAX_BATCH_SIZE="8", SERVE_MAX_BATCH_WAIT_MS="300")
    yield root, model, client
    model.close()


def test_adapter_model_serves_the_declared_language_with_its_own_head(mms, speech_clip):
    """target_lang fra in tokenizer_config.json: the fra adapter and its 45-token head, not the 30-token
    English head in model.safetensors."""
    root, model, client = mms
    assert model.info.languages == ("eng", "fra") and model.info.default_language == "fra"
    reply = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav")
    assert reply.status_code == 200
    assert reply.get_json()["text"] == checkpoints.reference_text(root, speech_clip, language="fra")


def test_language_per_request_by_header_query_and_json(mms, speech_clip):
    root, _, client = mms
    eng = checkpoints.reference_text(root, speech_clip, language="eng")
    fra = checkpoints.reference_text(root, speech_clip, language="fra")
    assert eng != fra
    by_header = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav",
                            headers={HEADER: "language=eng"})
    by_query = client.post("/invocations?language=eng", data=wav(speech_clip), content_type="audio/wav")
    audio = base64.b64encode(wav(speech_clip)).decode()
    by_json = client.post("/invocations", content_type="application/json", data=json.dumps(
        [{"audio": audio, "language": "eng"}, {"audio": audio}, {"audio": audio, "language": "fra"}]))
    assert by_header.get_json()["text"] == by_query.get_json()["text"] == eng
    assert [r["text"] for r in by_json.get_json()] == [eng, fra, fra]


def test_unknown_language_is_a_400_listing_the_languages(mms, speech_clip):
    _, _, client = mms
    reply = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav",
                        headers={HEADER: "language=deu"})
    assert reply.status_code == 400
    assert reply.get_json()["error"] == "unknown language 'deu'; this model has adapters for: eng, fra"


def test_requests_of_different_languages_never_share_a_pass(mms, speech_clip):
    """Concurrent requests in both languages with batching on: batches form, and each transcript is its own
    language's reference, so no pass ran with the other adapter."""
    root, model, client = mms
    want = {lang: checkpoints.reference_text(root, speech_clip, language=lang) for lang in ("eng", "fra")}
    langs = ["eng", "fra"] * 4
    before = model.batcher.batches_run

    def post(lang):
        from serve.app import create_app

        return create_app(model, Settings.from_env({})).test_client().post(
            "/invocations", data=wav(speech_clip), content_type="audio/wav", headers={HEADER: f"language={lang}"})

    with ThreadPoolExecutor(len(langs)) as pool:
        replies = list(pool.map(post, langs))
    assert [r.get_json()["text"] for r in replies] == [want[lang] for lang in langs]
    assert max(int(r.headers["X-Batch-Size"]) for r in replies) > 1
    assert model.batcher.batches_run - before < len(langs)


def test_default_language_setting(opt_ml_of, speech_clip):
    root = opt_ml_of("mms")
    model, client = app_client(root, SERVE_LANGUAGE="eng")
    try:
        assert model.info.default_language == "eng"
        reply = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav")
        assert reply.get_json()["text"] == checkpoints.reference_text(root, speech_clip, language="eng")
    finally:
        model.close()
    with pytest.raises(modeldir.ModelDirError, match="SERVE_LANGUAGE=deu is not one of this model's languages: eng, fra"):
        modeldir.load_checkpoint(root, language="deu")


def _mms_after_save_pretrained(dest) -> "Path":
    """facebook/mms-1b-all as `save_pretrained` leaves it, at tiny size: model.safetensors holds the English
    adapter and CTC head (what MMS loads by default), adapter.eng.safetensors (the same weights) and
    adapter.deu.safetensors beside it, vocab.json nested by language with a German alphabet larger than the
    English one (ä ö ü ß beyond its ids), and the processor saved by transformers with target_lang "deu"."""
    import torch
    from safetensors.torch import save_file
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    specials = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    alphabets = {"eng": "etaoinshrdlucmfwypvbgkjqxz'", "deu": "enisratdhulcgmobwfkzvüpäßjöyqx'"}
    vocabs = {lang: {**specials, **{c: 5 + i for i, c in enumerate(chars)}} for lang, chars in alphabets.items()}
    dest.mkdir(parents=True)
    vocab_file = dest.parent / "vocab_in.json"
    vocab_file.write_text(json.dumps(vocabs, ensure_ascii=False))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), target_lang="deu", unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(dest)
    model = checkpoints._model(checkpoints._config("wav2vec2", checkpoints.LAYER, len(vocabs["eng"]), 0,
                                                   adapter_attn_dim=8), 11)
    model.save_pretrained(dest)
    torch.manual_seed(12)
    for lang, vocab in vocabs.items():
        tensors = {}
        for name, p in modeldir.adapter_parameters(model).items():
            if lang == "eng":
                tensors[name] = p.detach().clone()
            else:
                shape = (len(vocab),) + tuple(p.shape[1:]) if name.startswith("lm_head.") else tuple(p.shape)
                tensors[name] = torch.randn(shape) * (0.5 if name.startswith("lm_head.") else 0.3)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / f"adapter.{lang}.safetensors"))
    return dest


def _transformers_mms(model_dir, audio, language: str) -> str:
    """transformers' own MMS recipe: from_pretrained(target_lang=..., ignore_mismatched_sizes=True) and the
    processor with that target_lang, argmax, batch_decode; the special tokens' text removed."""
    import torch
    from transformers import AutoProcessor, Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC.from_pretrained(model_dir, target_lang=language, ignore_mismatched_sizes=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, target_lang=language)
    assert processor.tokenizer.target_lang == language
    with torch.inference_mode():
        ids = model(**processor(audio, sampling_rate=RATE, return_tensors="pt")).logits.argmax(-1)
    text = processor.batch_decode(ids)[0]
    tok = processor.tokenizer
    for special in sorted(set(tok.all_special_tokens) - {tok.word_delimiter_token}, key=len, reverse=True):
        text = text.replace(special, "")
    return text.strip()


def test_mms_default_is_the_tokenizers_target_lang_as_transformers_loads_it(tmp_path, speech_clip):
    """Issue 28: with target_lang "deu" in the tokenizer config and the English head in model.safetensors, a
    request without `language` gets transformers' German transcript (the deu adapter and head, the deu
    vocabulary), and language=eng transformers' English one."""
    root = make_opt_ml(tmp_path / "opt_ml", _mms_after_save_pretrained(tmp_path / "mms")) / "model"
    assert json.loads((root / "tokenizer_config.json").read_text())["target_lang"] == "deu"
    deu, eng = (_transformers_mms(root, speech_clip, lang) for lang in ("deu", "eng"))
    assert deu != eng and set(deu) & set("äöüß")  # the German head writes letters the English one cannot
    model, client = app_client(root)
    try:
        assert model.info.default_language == "deu"
        default = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav")
        english = client.post("/invocations?language=eng", data=wav(speech_clip), content_type="audio/wav")
        german = client.post("/invocations?language=deu", data=wav(speech_clip), content_type="audio/wav")
        again = client.post("/invocations", data=wav(speech_clip), content_type="audio/wav")  # after eng's adapter
        assert [r.get_json()["text"] for r in (default, english, german, again)] == [deu, eng, deu, deu]
    finally:
        model.close()


def test_language_on_a_model_without_adapters_is_a_400(opt_ml_of, speech_clip):
    model, client = app_client(opt_ml_of("wav2vec2-base"))
    try:
        reply = client.post("/invocations?language=eng", data=wav(speech_clip), content_type="audio/wav")
        assert reply.status_code == 400 and "no language adapters" in reply.get_json()["error"]
    finally:
        model.close()


# Refused at start ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,says", [
    ("hubert-weights-wav2vec2-config", "The file holds a 'hubert' model, not a Wav2Vec2ForCTC"),
    ("pretrained-base", "declares Wav2Vec2ForPreTraining: a model without a CTC head"),
    ("whisper", "model_type 'whisper' is not a CTC speech recognition model"),
    ("evil-bin", "refused by torch's weights_only unpickler"),
    ("head-too-small", "the vocabulary has 35 tokens (ids up to 34) but the CTC head has 32 outputs"),
    ("head-too-big", "the CTC head has 32 outputs but the tokenizer has no token for ids 29, 30, 31"),
])
def test_what_cannot_be_served_is_refused_with_the_reason(kind, says, tmp_path):
    d = checkpoints.build_refused(kind, tmp_path / kind)
    with pytest.raises(modeldir.ModelDirError) as caught:
        modeldir.load_checkpoint(d)
    assert says in str(caught.value), caught.value
    assert not list(tmp_path.rglob("UNPICKLED"))


def test_the_server_refuses_hubert_weights_under_a_wav2vec2_config(tmp_path):
    """The case that answered 200 with random weights: the worker refuses to load and the server exits."""
    d = checkpoints.build_refused("hubert-weights-wav2vec2-config", tmp_path / "opt_ml" / "model")
    out = subprocess.run([str(SERVE), "serve"], capture_output=True, text=True, timeout=180,
                         env=program_env(OPT_ML=str(d.parent), SAGEMAKER_BIND_TO_PORT=str(free_port()),
                                         MODEL_SERVER_WORKERS="1"))
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert "cannot serve the model" in log and "holds a 'hubert' model" in log, log[-3000:]


def test_a_non_ctc_model_is_refused_before_any_worker_starts(tmp_path):
    d = checkpoints.build_refused("pretrained-base", tmp_path / "opt_ml" / "model")
    started = time.monotonic()
    out = subprocess.run([str(SERVE), "serve"], capture_output=True, text=True, timeout=60,
                         env=program_env(OPT_ML=str(d.parent), SAGEMAKER_BIND_TO_PORT=str(free_port())))
    assert out.returncode == 2
    assert "Wav2Vec2ForPreTraining: a model without a CTC head" in out.stderr
    assert time.monotonic() - started < 30
