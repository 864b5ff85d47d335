"""The languages one served model speaks: each one's vocabulary and, for adapter (MMS) models, its adapter.

A model directory without adapters has one language (its name None, or the directory's `language`). One with
adapters (common/modeldir.py: adapter.<lang>.safetensors and a tokenizer vocabulary per language) loads a
language on first use: its adapter read, checked against the model and its vocabulary, put on the device in
the serving dtype, and kept in a least-recently-used cache of `max_adapters` languages (the one in the model
now is never dropped). Request threads look languages up (`for_options`); the batcher thread alone puts a
language's adapter into the model before a forward pass (`activate`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from common import ctc, modeldir

from . import contract
from .options import Options

log = logging.getLogger("serve")


@dataclass
class Language:
    """One adapter language (or the model's only language: name None), as the model thread uses it."""
    name: str | None
    vocab: ctc.Vocabulary
    parameters: dict | None  # adapter parameters on the device; None without adapters


class Languages:
    """The languages of one prepared model (on `device` in `dtype`), loaded on first use. Thread-safe."""

    def __init__(self, checkpoint: modeldir.Checkpoint, model, *, device: torch.device, dtype: torch.dtype,
                 max_adapters: int = 16):
        self.path, self.model, self.device, self.dtype = checkpoint.path, model, device, dtype
        self.adapter_files = dict(checkpoint.languages)  # language -> its adapter file; empty without adapters
        self.default = checkpoint.language
        self.max_adapters = max(1, max_adapters)
        self._cache: OrderedDict[str | None, Language] = OrderedDict()
        self._lock = threading.Lock()
        params = None
        if self.adapter_files:
            params = {k: p for k, p in modeldir.adapter_parameters(model).items()}
        self._cache[self.default] = Language(
            self.default, ctc.Vocabulary(checkpoint.tokenizer, model.lm_head.out_features), params)
        self.active = self.default  # the adapter in the model now (batcher thread only)

    @property
    def names(self) -> tuple[str, ...]:
        """The adapter languages (empty for a model without adapters)."""
        return tuple(self.adapter_files)

    def for_options(self, options: Options) -> Language:
        """The request's language (options.language, else the default). UnknownLanguage (a 400) for a
        language this model has no adapter for; ModelFailure when its adapter does not fit the model."""
        name = options.language
        if name is None:
            name = self.default
        elif name not in self.adapter_files:
            raise contract.UnknownLanguage(name, list(self.adapter_files))
        return self.get(name)

    def get(self, name: str | None) -> Language:
        """The language's vocabulary and adapter, loaded on first use (least recently used dropped)."""
        with self._lock:
            found = self._cache.get(name)
            if found is not None:
                self._cache.move_to_end(name)
                return found
            found = self._load(name)
            self._cache[name] = found
            while len(self._cache) > self.max_adapters:
                oldest = next(iter(self._cache))
                if oldest == self.active:  # in the model now: keep; drop the next oldest
                    self._cache.move_to_end(oldest)
                    oldest = next(iter(self._cache))
                del self._cache[oldest]
            return found

    def activate(self, name: str | None) -> None:
        """The batcher thread, before a forward pass: the language's adapter into the model (if it has
        adapters and another one is in it now)."""
        if self.adapter_files and name != self.active:
            modeldir.set_adapter(self.model, self.get(name).parameters)
            self.active = name

    def _load(self, name: str) -> Language:
        path = self.adapter_files[name]
        started = time.monotonic()
        tensors = modeldir.read_adapter(path)
        try:
            size = modeldir.check_adapter(self.model, tensors, path)
            _, tokenizer = modeldir.load_processor_parts(self.path, name)
            modeldir.check_vocabulary(tokenizer, size)
        except modeldir.ModelDirError as exc:
            log.error("language %s cannot be served: %s", name, exc)
            raise contract.ModelFailure(f"the adapter for language {name!r} does not fit this model "
                                        f"(details in the server log)") from None
        parameters = {k: torch.nn.Parameter(t.to(self.device, self.dtype), requires_grad=False)
                      for k, t in tensors.items()}
        log.info("adapter %s loaded from %s in %.2f s", name, path.name, time.monotonic() - started)
        return Language(name, ctc.Vocabulary(tokenizer, size), parameters)
