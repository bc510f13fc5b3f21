"""The engine: configs, the GPT, the FLOP ledger, data and tokenizer, training."""

from .config import ConfigError, ModelConfig, TrainConfig
from .flops import FlopLedger
from .model import GPT, LSTMLM, LanguageModel, make_model

__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "FlopLedger", "GPT", "LSTMLM", "LanguageModel", "make_model"]
