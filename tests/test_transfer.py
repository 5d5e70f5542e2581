"""The staging ring of loader/transfer.py: bytes arrive unchanged through slots smaller than the
tensor, on CPU (synchronous path) and, marked `cuda`, through pinned buffers on a side stream
with dequantization on the GPU."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from warmload.loader.transfer import StagingRing


def needs_cuda(test):
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


def random_bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("n", [0, 1, 1000, 4096, 10_001])
def test_cpu_ring_copies_bytes_through_small_slots(n):
    ring = StagingRing("cpu", slots=3, slot_bytes=1024)
    data = random_bytes(n)
    out = ring.upload(memoryview(data))
    assert out.dtype == torch.uint8 and out.device.type == "cpu"
    assert np.array_equal(out.numpy(), data)
    assert ring.nbytes == n and ring.chunks == -(-n // 1024)
    assert ring.host_nbytes == 3 * 1024  # the ring, whatever the tensor's size


def test_ring_reads_readonly_mmap_views(tmp_path):
    data = random_bytes(5000, seed=1)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[100:4100]
        out = StagingRing("cpu", slots=2, slot_bytes=512).upload(view)
        assert np.array_equal(out.numpy(), data[100:4100])
        del out
        view.release()


def test_bad_ring_sizes():
    with pytest.raises(ValueError, match="slots >= 1"):
        StagingRing("cpu", slots=0)


@needs_cuda
def test_cuda_ring_uploads_and_dequantizes_on_gpu():
    from gguf import GGMLQuantizationType, quants

    from warmload.quant.dequant import dequantize

    w = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    raw = quants.quantize(w, GGMLQuantizationType.Q4_K)
    ring = StagingRing("cuda", slots=2, slot_bytes=4096)  # several chunks, slots reused
    on_gpu = ring.upload(memoryview(raw.reshape(-1)))
    ring.ready()
    got = dequantize(on_gpu, "Q4_K", w.shape)
    want = quants.dequantize(raw, GGMLQuantizationType.Q4_K).reshape(w.shape)
    assert got.is_cuda
    assert torch.equal(got.cpu(), torch.from_numpy(want))


@needs_cuda
def test_cuda_load_matches_cpu_load(smollm2_path):
    from warmload import open_checkpoint
    from warmload.config import LoadConfig
    from warmload.loader import load_model

    with open_checkpoint(smollm2_path) as ck:
        cpu, _ = load_model(ck, LoadConfig(packed=False))
        gpu, stats = load_model(ck, LoadConfig(device="cuda"))
    assert stats.stages["transfer"].nbytes == stats.source_nbytes  # raw bytes went over
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert b.is_cuda
        assert torch.allclose(a, b.cpu(), rtol=0, atol=1e-6), name


def test_streamed_load_path_on_cpu(tiny_files):
    """load_streamed (the CUDA path) run with a CPU ring: same weights as the default path."""
    from warmload import open_checkpoint
    from warmload.config import LoadConfig
    from warmload.loader import load_model, load_streamed, plan_for, read_model_config
    from warmload.loader.stats import LoadStats
    from warmload.models import ARCHITECTURES

    with open_checkpoint(tiny_files["q4_k_m"]) as ck:
        reference, _ = load_model(ck, LoadConfig(packed=False))  # as on a GPU: dequantized
        arch, config = read_model_config(ck)
        model = ARCHITECTURES[arch].build_model(config)
        stats = LoadStats()
        with torch.no_grad():
            plan = plan_for(ck, arch, model, packed=False)
            load_streamed(ck, plan, model, torch.device("cpu"), stats)
    assert stats.stages["transfer"].nbytes == stats.source_nbytes
    for (name, a), (_, b) in zip(reference.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name
