"""The model contract cannot drift: serve/contract.py's Protocols against what implements them (the real
ServingModel and its live stream, the fake models every front-door test uses), by method names and
signatures; the front doors ask the model for nothing else; the error hierarchy's statuses and close codes."""
from __future__ import annotations

import ast
import inspect
import time

import numpy as np
import pytest
import torch

from conftest import ROOT
from fake_models import FakeModel, FakeStream
from serve import contract
from serve import model as sm
from serve import streaming
from serve.options import Options


def members(protocol) -> tuple[set[str], set[str]]:
    """A Protocol's methods and its data members (annotations)."""
    methods = {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    data = set(protocol.__annotations__)
    return methods, data


def shape(fn) -> list[tuple[str, inspect._ParameterKind, bool]]:
    """Parameter names, kinds and whether each has a default (annotations are compared by name elsewhere)."""
    return [(p.name, p.kind, p.default is not p.empty) for p in inspect.signature(fn).parameters.values()]


IMPLEMENTATIONS = [(contract.Model, sm.ServingModel), (contract.Model, FakeModel),
                   (contract.LiveStream, streaming.Transcriber), (contract.LiveStream, FakeStream)]


@pytest.mark.parametrize("protocol,impl", IMPLEMENTATIONS, ids=lambda x: x.__name__)
def test_implementations_have_the_protocol_s_methods_and_signatures(protocol, impl):
    methods, _ = members(protocol)
    for name in sorted(methods):
        assert callable(getattr(impl, name, None)), f"{impl.__name__} has no {name}()"
        assert shape(getattr(impl, name)) == shape(getattr(protocol, name)), \
            f"{impl.__name__}.{name}{inspect.signature(getattr(impl, name))} is not " \
            f"{protocol.__name__}.{name}{inspect.signature(getattr(protocol, name))}"


def test_the_contract_declares_the_methods_the_front_doors_need():
    assert members(contract.Model) == ({"health", "transcribe", "transcribe_iter", "open_stream"}, {"info"})
    assert members(contract.LiveStream) == ({"push", "advance", "finish", "commit", "clear", "set_turn_detection"},
                                            {"audio_seconds", "utterances", "windows", "max_batch", "behind_s"})


def _calls_on(path, holders: set[str]) -> set[str]:
    """Attribute names read from an expression ending in one of `holders` (model, self.model, self.hub.model)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if name in holders:
                found.add(node.attr)
    return found


def test_the_front_doors_ask_the_model_only_what_the_contract_declares():
    model_methods, model_data = members(contract.Model)
    stream_methods, stream_data = members(contract.LiveStream)
    for path in (ROOT / "serve" / "app.py", ROOT / "serve" / "stream_route.py", ROOT / "serve" / "realtime.py"):
        asked = _calls_on(path, {"model"})
        assert asked and asked <= model_methods | model_data, (path.name, asked - model_methods - model_data)
    for path in (ROOT / "serve" / "stream_route.py", ROOT / "serve" / "realtime.py"):
        streamed = _calls_on(path, {"stream", "t"})
        assert streamed and streamed <= stream_methods | stream_data, (path.name,
                                                                        streamed - stream_methods - stream_data)
    tree = ast.parse((ROOT / "serve" / "stream_route.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "streaming" not in imported and "model" not in imported


def test_a_real_model_s_stream_keeps_the_contract(tiny_model_dir, speech_clip):
    from common import modeldir

    model = sm.ServingModel(modeldir.load_checkpoint(tiny_model_dir), device=torch.device("cpu"),
                            dtype=torch.float32).start()
    try:
        assert isinstance(model, contract.Model) and isinstance(model.info, contract.ModelInfo)
        assert model.info.has_lm is False
        with pytest.raises(contract.BadRequest, match="no language adapters"):
            model.open_stream(Options(language="fra"))
        stream = model.open_stream(Options())
        assert isinstance(stream, contract.LiveStream)
        events = []
        for i in range(0, len(speech_clip), 3200):
            stream.push(speech_clip[i: i + 3200])
            events += stream.advance(time.monotonic() + 60)
        events += stream.finish(time.monotonic() + 60)
        assert events and all(isinstance(e, (contract.Partial, contract.Final)) for e in events)
        assert isinstance(events[-1], contract.Final) and events[-1].last
        assert all(isinstance(w, contract.Word) for e in events if isinstance(e, contract.Final) for w in e.words)
        assert stream.audio_seconds == pytest.approx(len(speech_clip) / 16_000) and stream.windows > 0
        assert stream.max_batch >= 1 and isinstance(stream.utterances, int)
    finally:
        model.close()


def test_the_fake_models_keep_the_contract_at_run_time():
    fake = FakeModel()
    assert isinstance(fake, contract.Model)
    stream = fake.open_stream(Options())
    assert isinstance(stream, contract.LiveStream)
    stream.push(np.ones(1600, np.float32))
    assert stream.advance(0.0) == [contract.Partial(0, "1600 samples", "", 0.0, 0.1)]
    assert stream.finish(0.0) == [contract.Final(0, "1600 samples", 0.0, 0.1, True, (contract.Word("x", 0.0, 0.1),))]


@pytest.mark.parametrize("error,status,close_code", [
    (contract.BadRequest, 400, 1007), (contract.UnknownLanguage, 400, 1007), (contract.PayloadTooLarge, 413, 1009),
    (contract.UnsupportedMediaType, 415, 1003), (contract.NotAcceptable, 406, 1003),
    (contract.RequestTimeout, 408, 1008),
    (contract.LimitReached, 413, 1008), (contract.Timeout, 503, 1013), (contract.Unavailable, 503, 1013),
    (contract.FellBehind, 503, 1013),
    (contract.ModelFailure, 500, 1011), (contract.ServingError, 500, 1011),
])
def test_every_error_carries_its_http_status_and_close_code(error, status, close_code):
    assert issubclass(error, contract.ServingError)
    assert (error.status, error.close_code) == (status, close_code)


def test_there_is_one_error_hierarchy():
    """No other exception class with a status or a close code in serve/ (serve/worker.py's ClientTooSlow is a
    RequestTimeout)."""
    for path in sorted((ROOT / "serve").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "contract.py":
                assigned = {t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                            if isinstance(t, ast.Name)}
                source = ast.get_source_segment(path.read_text(), node)
                assert not ({"status", "close_code", "code"} & assigned) and "self.status" not in source \
                    and "self.code" not in source, f"{path.name}: {node.name} carries its own status"
