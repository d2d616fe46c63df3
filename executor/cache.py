"""Static KV cache for the fast decoder: preallocated per layer, written in place, cropped for rollback.

Attention reads a cache slot ``j`` for a query at position ``p`` iff ``j <= p`` (position masking), and every
forward writes its own K/V before it attends. So a slot beyond a crop point is never read before it has been
rewritten: ``crop`` only moves the per-layer length (no copy, no graph-breaking host sync), which is what lets a
speculative schedule roll back rejected tokens for free.
"""

from __future__ import annotations

import torch

KV_BUCKET_MIN = 256


def kv_bucket(kv_len: int, max_len: int, minimum: int = KV_BUCKET_MIN) -> int:
    """Smallest power-of-two attention window (>= minimum, <= max_len) covering ``kv_len`` positions.

    Graph-captured steps attend over a fixed window; bucketing keeps the number of captured shapes small while the
    bytes read stay within 2x of the live KV length.
    """
    if kv_len > max_len:
        raise ValueError(f"kv_len {kv_len} exceeds the cache's max_len {max_len}")
    bucket = minimum
    while bucket < kv_len:
        bucket *= 2
    return min(bucket, max_len)


def window_capacity(max_len: int, limit: int) -> int:
    """Slots to allocate for a cache asked to hold ``max_len`` positions of a model whose RoPE table ends at
    ``limit``: the attention window of its last position. Allocating whole windows makes every window a function
    of position alone (``kv_bucket(p + 1, capacity)`` is the same for every cache of the model that holds ``p``), so
    the same token at the same position gives bit-identical logits whatever the cache was sized for."""
    return kv_bucket(max_len, max(limit, max_len))


def cache_slots(max_len: int, limit: int, batch_size: int = 1) -> int:
    """Slots of a model's cache asked to hold ``max_len`` positions. A decode cache (batch 1) always spans the
    model's whole context ``limit``: compiled steps are specialised on the cache's strides, so caches of different
    sizes (AR's, a schedule's with its lookahead, the synthetic reference's, the profiler's) would each compile the
    same layer again, and on a GPU each compile tunes its reductions anew, so the same token at the same position
    could round differently per schedule. Batched caches (feature extraction for training, eager) keep whole windows
    (``window_capacity``)."""
    if max_len > limit:
        raise ValueError(f"cache max_len {max_len} exceeds the model's max_seq_len {limit}")
    return window_capacity(limit if batch_size == 1 else max_len, limit)


def persistent_buffers():
    """Allocate state that compiled steps read (caches) as ordinary tensors whether or not the caller is in
    inference mode: an inference tensor has other dispatch keys, so torch.compile guards would compile the same
    layer again for it, and on a GPU a second compile may tune its reductions differently (other bf16 rounding,
    another greedy token than AR's for the same token at the same position)."""
    return torch.inference_mode(False)


class KVCache:
    """K and V buffers ``[batch, kv_heads, max_len, head_dim]`` for every decoder layer.

    ``lengths`` (a device tensor, one entry per layer) is the number of valid positions of each layer; forwards
    raise it inside the computation (graph-safe), ``crop`` lowers it. Different layer ranges may hold different
    lengths (SPD stage ``s`` runs ``s`` positions behind stage 0).
    """

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, kv_heads, max_len, head_dim)
        self.num_layers = num_layers
        self.max_len = max_len
        self.batch_size = batch_size
        with persistent_buffers():
            self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
            self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
            self.lengths = torch.zeros(num_layers, dtype=torch.long, device=device)

    def layer_range(self, start_layer: int = 0, end_layer: int | None = None) -> range:
        end = self.num_layers if end_layer is None else end_layer
        if not 0 <= start_layer <= end <= self.num_layers:
            raise ValueError(f"layer range [{start_layer}, {end}) outside [0, {self.num_layers})")
        return range(start_layer, end)

    def crop(self, length: int, start_layer: int = 0, end_layer: int | None = None) -> None:
        """Forget every position >= ``length`` in layers [start_layer, end_layer)."""
        if length < 0:
            raise ValueError(f"crop length must be >= 0, got {length}")
        layers = self.layer_range(start_layer, end_layer)
        view = self.lengths[layers.start : layers.stop]
        view.clamp_(max=length)

    def reset(self) -> None:
        self.lengths.zero_()

    def length(self, layer: int = 0) -> int:
        """Valid positions of one layer (host sync; for bookkeeping and tests, not the timed path)."""
        return int(self.lengths[layer])

    def note_written(self, start_layer: int, end_layer: int, positions: torch.Tensor) -> None:
        """Raise the lengths of layers [start_layer, end_layer) to cover ``positions``, on the device."""
        view = self.lengths[start_layer:end_layer]
        torch.maximum(view, positions.max() + 1, out=view)

    def nbytes(self, kv_len: int | None = None) -> int:
        """Bytes of K+V over all layers for ``kv_len`` positions (the whole buffer if None)."""
        per_pos = self.keys[0].numel() // self.max_len * self.keys[0].element_size()
        positions = self.max_len if kv_len is None else kv_len
        return 2 * self.num_layers * per_pos * positions
