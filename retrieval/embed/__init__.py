"""Encoders: texts in, float32 L2-normalised matrix out.

Modules, from the bottom up (each imports only those above it):

* ``cpu``: CPU features (with ``RETRIEVAL_HIDE_CPU_FEATURES``) and thread counts;
* ``model``: resolve a model name to files and a model key; ``layout``: a model
  directory's modules, pooling and tokenizer for the exported-graph encoders;
* ``base``: the :class:`Encoder` interface and the one batching loop;
* ``hashing``, ``sentence_transformers``, ``onnx``, ``openvino``: the encoders
  (``runtimes`` builds the last two);
* ``export``: the one-time ONNX export, checked against torch;
* ``choice``: which backend and precision run, and why;
* ``factory``: builds (and shares within a process) the encoder the settings ask for.
"""

from retrieval.embed.base import Encoder
from retrieval.embed.factory import create_encoder, encoder_for, plan_for
from retrieval.embed.model import ModelInfo, resolve_model

__all__ = ["Encoder", "ModelInfo", "resolve_model", "create_encoder", "encoder_for", "plan_for"]
