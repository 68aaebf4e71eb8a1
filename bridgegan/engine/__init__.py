"""Inference engine: the rewritten generator on several backends, behind a batched API."""
from .backends import BACKENDS, BackendUnavailable
from .engine import EditStrip, Engine
from .graph import InferenceGraph, Rewrites

__all__ = ["Engine", "EditStrip", "InferenceGraph", "Rewrites", "BACKENDS", "BackendUnavailable"]
