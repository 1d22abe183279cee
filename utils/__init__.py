"""Shared helpers of the course: device and dtype choice, loading, memory measurement, plots, seeding.

The training-memory estimator is the subpackage ``utils.estimator`` (notebooks import it as ``E``).

The lessons themselves live in the notebooks; this package only keeps what several of them share.
"""
from .device import compute_dtype, dtype_from_name, get_device, mixed_precision_flags, native_bf16, supports_bf16
from .chat_data import ChatDataError, check_conversations, load_chat_data, validate_conversations
from .env import check_environment, quiet, seed_everything
from .exercises import check_answer, check_function
from .launch import RankFailure, leftover_processes, torchrun
from .layers import decoder_layers, linear_layers, linear_shape, weight_matrix
from .loading import BUNDLED_MODEL, heldout_text, load_model, load_task_dataset, model_name, nf4_config
from .memory import (
    MiB,
    MemoryTrace,
    StepMemory,
    count_saved_tensors,
    format_bytes,
    gradient_bytes,
    measure_training_step,
    optimizer_state_bytes,
    parameter_bytes,
    quant_constant_bytes,
    tensor_bytes,
    trace_memory,
    unique_bytes,
)
from .plots import plot_loss, plot_memory_breakdown, plot_memory_timeline
from .task import exact_match, generate, generate_ids, perplexity, score
from .training import adapters_in_training_dtype, lm_batch, lora_config, sft_config

__all__ = [
    "BUNDLED_MODEL", "MiB", "MemoryTrace", "RankFailure", "StepMemory", "check_answer", "check_environment", "check_function", "compute_dtype",
    "count_saved_tensors", "decoder_layers", "dtype_from_name", "exact_match", "format_bytes", "generate", "get_device",
    "gradient_bytes", "heldout_text", "leftover_processes", "linear_layers", "linear_shape", "load_model", "load_task_dataset", "measure_training_step",
    "mixed_precision_flags", "model_name", "nf4_config", "optimizer_state_bytes", "parameter_bytes", "perplexity", "plot_loss",
    "plot_memory_breakdown", "plot_memory_timeline", "quant_constant_bytes", "quiet", "score", "seed_everything",
    "native_bf16", "supports_bf16", "tensor_bytes", "torchrun", "trace_memory", "unique_bytes", "weight_matrix",
    "adapters_in_training_dtype", "lm_batch", "lora_config", "sft_config",
    "ChatDataError", "check_conversations", "generate_ids", "load_chat_data", "validate_conversations",
]
