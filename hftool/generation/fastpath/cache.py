"""Keys and values in buffers allocated once, for the fused decode steps."""

from __future__ import annotations


class PreallocatedCache:
    """The keys and values of a ``DynamicCache``, moved into buffers with room for ``capacity`` positions.

    ``DynamicCache`` concatenates each new position onto the whole cache, copying every layer's keys and values
    on every step; here a step writes one position and hands out views of the filled part. The views hold the
    same values with the same layout within each head, and the ``DynamicCache`` layers are kept pointing at
    them. A buffer that fills up is reallocated twice as large. The filled length is counted here, not read off
    the ``DynamicCache``, so a forward through the model between building and the first step (the fast path's
    check) does not shift where the step writes.
    """

    def __init__(self, cache, capacity: int):
        self.cache = cache
        self.buffers = [(self._buffer(layer.keys, capacity), self._buffer(layer.values, capacity))
                        for layer in cache.layers]
        self.lengths = [layer.keys.shape[-2] for layer in cache.layers]

    def _buffer(self, filled, capacity: int):
        buffer = filled.new_empty((*filled.shape[:-2], max(capacity, filled.shape[-2] + 1), filled.shape[-1]))
        buffer[..., : filled.shape[-2], :] = filled
        return buffer

    def append(self, layer: int, key, value):
        """Write one position's ``key`` and ``value`` (batch, heads, 1, head_dim); the layer's keys and values."""
        length = self.lengths[layer]
        keys, values = self.buffers[layer]
        if length == keys.shape[-2]:
            keys, values = self._buffer(keys, 2 * length), self._buffer(values, 2 * length)
            self.buffers[layer] = keys, values
        keys[..., length, :] = key[..., 0, :]
        values[..., length, :] = value[..., 0, :]
        self.lengths[layer] = length + 1
        cached = self.cache.layers[layer]
        cached.keys, cached.values = keys[..., : length + 1, :], values[..., : length + 1, :]
        return cached.keys, cached.values
