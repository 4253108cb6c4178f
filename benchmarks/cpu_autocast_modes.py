"""Why bf16 autocast ran slower under `torch.inference_mode()` than under `torch.no_grad()` on a CPU, measured.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice python benchmarks/cpu_autocast_modes.py

The ViT-B/32 image tower (open_clip, random weights), batch 32, 2 threads, every variant in turn and each one's
best round kept (other load on the machine then hurts all of them alike). For each variant it also counts, in one
forward, the batched products (aten::bmm) whose batched operand is a linear weight: open_clip's attention feeds its
input projection a transposed (sequence-first, non-contiguous) 3-D tensor, and when matmul does not fold that into
one matrix product it expands the weight over the 50 positions for a batched one, which in bf16 first copies the
expanded weight (50 x 768 x 2304 x 2 bytes = 177 MB per layer). matmul folds when the weight requires grad, which
autocast's cached weight copies do and its uncached ones (under inference_mode, or of frozen weights) do not.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from torch.profiler import profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from pictag.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = create_model("open_clip:ViT-B-32", random_weights=True, device="cpu", precision="fp32")
    bf16 = create_model("open_clip:ViT-B-32", random_weights=True, device="cpu", precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    tower = fp32.module.visual
    pixels = torch.randn(args.batch_size, 3, 224, 224)

    def raw(grad_mode, dtype, frozen=False):
        def forward():
            for p in tower.parameters():
                p.requires_grad_(not frozen)
            autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext()
            with grad_mode(), autocast:
                return tower(pixels)

        return forward

    variants = {
        "fp32, inference_mode": raw(torch.inference_mode, torch.float32),
        "fp32, no_grad": raw(torch.no_grad, torch.float32),
        "bf16 autocast, inference_mode": raw(torch.inference_mode, torch.bfloat16),
        "bf16 autocast, no_grad": raw(torch.no_grad, torch.bfloat16),
        "bf16 autocast, no_grad, frozen weights": raw(torch.no_grad, torch.bfloat16, frozen=True),
        "pictag encode_image, fp32": lambda: fp32.encode_image(pixels),
        "pictag encode_image, bf16": lambda: bf16.encode_image(pixels),
    }
    best = dict.fromkeys(variants, 0.0)
    weights = {(m.in_features, m.out_features) for m in tower.modules() if isinstance(m, torch.nn.Linear)}
    weights |= {(p.shape[1], p.shape[0]) for name, p in tower.named_parameters() if name.endswith("in_proj_weight")}
    bmm = {}
    for name, fn in variants.items():
        fn()  # warm up
        with profile(record_shapes=True) as prof:
            fn()
        bmm[name] = sum(
            e.name == "aten::bmm" and len(e.input_shapes[1]) == 3 and tuple(e.input_shapes[1][1:]) in weights
            for e in prof.events()
        )
    for _ in range(args.rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            best[name] = max(best[name], args.batch_size / (time.perf_counter() - started))
    for p in tower.parameters():
        p.requires_grad_(True)
    print(
        f"ViT-B/32 image tower, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
        f"best of {args.rounds} rounds"
    )
    for name in variants:
        print(f"  {name:<40} {best[name]:6.1f} img/s   weights expanded per forward: {bmm[name]}")


if __name__ == "__main__":
    main()
