"""The loss over the vocabulary: what it saves for backward and what it holds while it runs.

Two ways to compute it, chosen by ``Recipe.chunked_loss``:

- **plain** (``LlamaForCausalLM(labels=...)``, transformers 5.24 ``loss/loss_utils.py``): the whole
  ``(tokens, vocab)`` logits, upcast to fp32, ``log_softmax`` saved for backward; its backward makes
  two fp32 ``(tokens, vocab)`` gradients (``nll_loss_backward``, ``_log_softmax_backward_data``).
- **chunked** (trl 1.16's default ``loss_type="nll"``: ``SFTTrainer`` calls ``add_fused_lm_head``,
  ``trl/trainer/utils.py``, whose ``ChunkedLogProbFunction``, ``trl/kernels/chunked_logprob.py``,
  never materializes the logits). Forward: the final hidden states without the last position are
  projected through the LM head tile by tile, ``TOKEN_CHUNK`` tokens x ``VOCAB_CHUNK`` words into one
  reused buffer, and folded into per-token running statistics (max, sum of exponentials, entropy,
  target logit); it saves the hidden states, the targets and two fp32 numbers per token. Backward:
  each tile is recomputed, turned into its logit gradient in place, and multiplied into fp32
  accumulators for the hidden states' gradient (and, if the head trains, the head's).

  The tile buffer is ``min(tokens, TOKEN_CHUNK) x VOCAB_CHUNK`` whatever the vocabulary: with a
  vocabulary under 32768 words the chunked loss holds *more* than the plain one. On CUDA the fold is
  a Triton kernel working in registers; without Triton (the CPU) it is torch code on the whole tile,
  whose temporaries are counted here (:data:`CPU_FORWARD_TILE_BYTES`, :data:`CPU_BACKWARD_TILE_BYTES`).
"""
from __future__ import annotations

VOCAB_CHUNK = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary columns per tile
TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE: token rows per tile
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks add_fused_lm_head for
# fp32 per-token vectors the chunked forward allocates: running max, sum of exponentials, x*exp sum,
# squared sum, logit sum, max before the target, target logit (all allocated, whichever are asked for)
FORWARD_RUNNING_VECTORS = 7
# Bytes per tile element of the torch fold without Triton (trl/kernels/chunked_logprob.py), counted from
# the code at its fullest line; fp32 copies are 4 B, boolean masks 1 B:
# _forward_tile, `x_sum_exp ... (e * z).sum(-1)` (the exp line holds as much): z, the `before_target`
# mask of the is_top1 output, e = exp(z - max), and e * z.
CPU_FORWARD_TILE_BYTES = 4 + 1 + 4 + 4
# _backward_tile, `grad += g * (is_target.float() - p)`: y, z, log_p, p, grad (5 fp32), the is_target
# mask, is_target.float() and its difference with p.
CPU_BACKWARD_TILE_BYTES = 5 * 4 + 1 + 4 + 4
# The fused forward zeroes ignored positions with one `masked_fill(~mask)` per output, each saving its own
# mask when the output needs a gradient: log_probs and entropy (is_top1 has none).
MASKS_SAVED_TORCH = 2
PLAIN_BACKWARD_BUFFERS = 2  # fp32 (tokens, vocab) gradients of the log-softmax and of the logits


def scored_tokens(batch_size: int, seq_len: int) -> int:
    """Tokens the chunked loss scores: every position but the last of each sequence (unpadded batches)."""
    return batch_size * (seq_len - 1)


def tile_elements(tokens: int, vocab: int) -> int:
    """Elements of the largest tile the chunked loss folds: its token rows times its vocabulary columns."""
    return min(tokens, TOKEN_CHUNK) * min(vocab, VOCAB_CHUNK)


def tile_buffer_bytes(tokens: int, compute_itemsize: int) -> int:
    """The reused projection buffer: ``min(tokens, TOKEN_CHUNK) x VOCAB_CHUNK`` in the compute dtype."""
    return min(tokens, TOKEN_CHUNK) * VOCAB_CHUNK * compute_itemsize


def plain_backward_bytes(logits_numel: int) -> int:
    """Temporaries of the plain loss's backward: two fp32 gradients over the whole logits."""
    return PLAIN_BACKWARD_BUFFERS * logits_numel * 4


def _copies(tokens: int, hidden: int, vocab: int, compute: int, hidden_itemsize: int, weight_itemsize: int) -> int:
    """``hidden_chunk.to(compute)`` and ``weight[start:end].to(compute)``: copies when the dtypes differ."""
    rows, cols = min(tokens, TOKEN_CHUNK), min(vocab, VOCAB_CHUNK)
    return ((rows * hidden * compute if hidden_itemsize != compute else 0)
            + (cols * hidden * compute if weight_itemsize != compute else 0))


def chunked_forward_bytes(tokens: int, hidden: int, vocab: int, compute: int, hidden_itemsize: int,
                          weight_itemsize: int, triton: bool) -> int:
    """Temporaries of the chunked loss's forward at its fullest: the tile buffer, the running per-token
    vectors, the dtype copies of one chunk, and (without Triton) the fold's whole-tile temporaries."""
    total = tile_buffer_bytes(tokens, compute) + FORWARD_RUNNING_VECTORS * tokens * 4
    total += _copies(tokens, hidden, vocab, compute, hidden_itemsize, weight_itemsize)
    return total + (0 if triton else CPU_FORWARD_TILE_BYTES * tile_elements(tokens, vocab))


def chunked_backward_bytes(tokens: int, hidden: int, vocab: int, compute: int, hidden_itemsize: int,
                           weight_itemsize: int, head_trains: bool, triton: bool) -> int:
    """Temporaries of the chunked loss's backward at its fullest: the tile buffer, the fp32 accumulators of
    the hidden states' gradient (and of the head's, if it trains), and the larger of the fold's
    temporaries (without Triton) with one chunk's dtype copies, and the accumulators' final casts back
    to the tensors' dtypes."""
    acc_h, acc_w = tokens * hidden * 4, (vocab * hidden * 4 if head_trains else 0)
    base = tile_buffer_bytes(tokens, compute) + acc_h + acc_w
    in_loop = _copies(tokens, hidden, vocab, compute, hidden_itemsize, weight_itemsize)
    in_loop += 0 if triton else CPU_BACKWARD_TILE_BYTES * tile_elements(tokens, vocab)
    casts = (acc_h * hidden_itemsize // 4 if hidden_itemsize != 4 else 0) + (
        acc_w * weight_itemsize // 4 if weight_itemsize != 4 else 0)
    return base + max(in_loop, casts)
