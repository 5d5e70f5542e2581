"""Bytes on disk -> metadata + TensorInfo records. stdlib + numpy only, never torch."""
