"""`warmload info [--json]`: what this machine runs and why, as llama.cpp's system_info.

The CPU (model, features as the kernel dispatcher reads them), the kernel variants built and
the one picked (warmload/kernels/dispatch.py), threads, torch and its BLAS when torch is
installed, and the path each kind of forward takes here (decode step, short prompt chunk, long
prompt, ragged batch). torch is imported only for its own lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show the CPU, kernel variants and compute paths")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_report(report)
    return 0


def collect() -> dict:
    from warmload import kernels
    from warmload.kernels import dispatch
    from warmload.threads import default_threads, physical_cores, usable_cpus

    features = dispatch.cpu_features()
    built = dispatch.built_variants()
    return {
        "cpu": {
            "name": dispatch.cpu_name(),
            "machine": platform.machine(),
            "system": platform.system(),
            "features": sorted(name for name, on in features.items() if on),
            "features_from": dispatch.feature_source(),
        },
        "kernels": {
            "variant": kernels.VARIANT,
            "reason": kernels.VARIANT_REASON,
            "forced": os.environ.get(dispatch.ENV) or None,
            "built": built,
            "runnable": dispatch.runnable_variants(),
            "not_built": [v for v in dispatch.machine_variants() if v not in built],
            "integer_types": sorted(t for t, k in kernels.KERNEL_TYPES.items() if k == "int8"),
            "float_types": sorted(t for t, k in kernels.KERNEL_TYPES.items() if k == "float"),
        },
        "threads": {
            "usable_cpus": len(usable_cpus()),
            "physical_cores": physical_cores(),
            "default": default_threads(),
        },
        "torch": torch_info(),
        "paths": paths(),
    }


def torch_info() -> dict | None:
    """torch's version and the BLAS / oneDNN it was built with (None without torch)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", config)
    mkldnn = re.search(r"USE_MKLDNN=(\w+)", config)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return {
        "version": torch.__version__,
        "blas": blas.group(1) if blas else "unknown",
        "lapack": lapack.group(1) if lapack else "unknown",
        "onednn": mkldnn.group(1) if mkldnn else "unknown",
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "amx_tiles": bool(amx),
    }


def paths() -> dict[str, str]:
    """What each kind of forward runs on, for the common quant types (Q4_K, Q6_K, Q8_0 ..)."""
    from warmload import kernels

    if not kernels.AVAILABLE:
        every = "torch on weights dequantized at load (no kernel variant runs here)"
        return dict.fromkeys(("decode step", "short chunk", "long prompt", "ragged batch"), every)
    gemm = bool(kernels.GEMM_TYPES)
    integer = f"integer many-token product (gemm.c, {kernels.VARIANT})"
    rows = "integer row dots (quants.c)" if "int8" in kernels.KERNEL_TYPES.values() else None
    long_prompt = long_prompt_path()
    return {
        "decode step": integer if kernels.DECODE_TAKES_GEMM else rows or "float row dots in C",
        "short chunk": (integer if gemm else "each weight row dequantized and dotted in C")
        + f" (< {matmul_gemm_tokens()} tokens)",
        "long prompt": long_prompt,
        "ragged batch": (
            "one fused C pass per step (the decode plan with chunks), where every matrix of the"
            " model has an integer type"
            if kernels.DECODE_TAKES_GEMM
            else "no ragged pass: rows step apart"
        ),
    }


def matmul_gemm_tokens() -> int:
    if importlib.util.find_spec("torch") is None:
        return 64
    from warmload.quant.matmul import GEMM_TOKENS

    return GEMM_TOKENS


def long_prompt_path() -> str:
    """Prompt chunks of GEMM_TOKENS and more (torch imported: its GEMM is one option)."""
    from warmload import kernels

    if importlib.util.find_spec("torch") is None:
        return "unavailable without torch"
    from warmload.quant import matmul

    if kernels.GEMM_TYPES and matmul.long_prompts_take_integer_product():
        return f"integer many-token product (gemm.c, {kernels.VARIANT}): no float weight copy"
    kind = "bfloat16 on AMX tiles" if matmul.AMX_BF16_GEMM else "float32"
    return f"torch {kind} GEMM on weight slices dequantized into a bounded scratch buffer"


def print_report(r: dict) -> None:
    cpu, k, t = r["cpu"], r["kernels"], r["threads"]
    lines = [
        ("cpu", f"{cpu['name']} ({cpu['machine']}, {cpu['system']})"),
        ("features", " ".join(cpu["features"]) or "none"),
        ("features from", cpu["features_from"]),
        ("kernel variant", k["variant"] or "none"),
        ("why", k["reason"]),
        ("built", ", ".join(k["built"]) or "none"),
        ("runnable here", ", ".join(k["runnable"]) or "none"),
        ("not built", ", ".join(k["not_built"]) or "-"),
        ("integer types", ", ".join(k["integer_types"]) or "-"),
        ("threads", f"{t['default']} default, {t['physical_cores']} cores, "
                    f"{t['usable_cpus']} usable CPUs"),
    ]  # fmt: skip
    torch = r["torch"]
    if torch is None:
        lines.append(("torch", "not installed"))
    else:
        lines.append(
            (
                "torch",
                f"{torch['version']} (BLAS {torch['blas']}, oneDNN {torch['onednn']}, "
                f"{torch['capability']}, AMX {'yes' if torch['amx_tiles'] else 'no'})",
            )
        )
    lines += [(f"path: {name}", how) for name, how in r["paths"].items()]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
