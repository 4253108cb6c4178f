"""Which engine a job's encoder runs on: `--engine auto` measured once per model and machine, and int8 checked.

`engine_for` is what `pictag.models.build_encoder` calls: it picks the engine, calibrates int8 on the images the
job read from its own source, and prints int8's agreement with fp32 on the images held out from calibration, over
the head the job built. It reads no source and builds no head itself.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from pictag.config import cache_dir
from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.engines.agreement import Agreement, Calibration, measure_agreement
from pictag.models.engines.encoder import compile_encoder, engine_precision, library_versions, precision_of
from pictag.models.engines.runtimes import RUNTIMES
from pictag.storage.files import atomic_file

if TYPE_CHECKING:
    from pictag.heads.base import Head


def say(text: str) -> None:
    """One line to stderr: the choices a run makes for the user (engine, int8 agreement)."""
    print(f"pictag: {text}", file=sys.stderr, flush=True)


def engine_for(
    encoder: Encoder,
    engine: str,
    *,
    requested: str | None = None,
    quantize: str | None = None,
    calibration: Sequence[tuple[str, bytes]] = (),
    calibration_images: int = 300,
    head: Callable[[Encoder], Head | None] | None = None,
    min_agreement: float = 0.99,
    strict: bool = False,
    batch_size: int = 32,
) -> Encoder:
    """The encoder on `engine`; see `pictag.models.build_encoder` for the arguments (`requested`: its precision).

    Raises:
        PictagError: an engine that is missing or cannot run this precision, int8 without images, or (with
            `strict`) int8 agreement below `min_agreement`.
    """
    calibrate = held = None
    held_out = True
    if quantize:
        if not calibration:
            raise PictagError("--quantize int8 calibrates on the job's own images: it needs a SOURCE")
        first, rest, held_out = split_held_out(list(calibration), calibration_images)
        calibrate, held = Calibration(first, encoder), Calibration(list(rest), encoder)
    if engine == "auto":
        engine = choose_engine(
            encoder, quantize=quantize, calibration=calibrate, batch_size=batch_size, requested=requested
        )
    precision, note = engine_precision(encoder, engine, requested)
    if note:
        say(note)
    compiled = compile_encoder(encoder, engine, quantize=quantize, calibration=calibrate, precision=precision)
    if quantize:
        agreement = _cached_agreement(encoder, compiled, held, head(encoder) if head else None, held_out)
        check_agreement(agreement, engine, min_agreement, strict)
    return compiled


def _cached_agreement(encoder: Encoder, compiled, held: Calibration, head, held_out: bool) -> Agreement:
    """int8's agreement on the held-out images, measured once per quantized model, images and head."""
    key = {"int8": compiled.compiled.folders["image"], "held_out": held.digest, "head": _digest(head)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "engines" / "agreement" / f"{digest}.json"
    try:
        return Agreement(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    agreement = int8_agreement(encoder, compiled, held.pixels(), head, held_out=held_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        f.write(json.dumps(asdict(agreement)))
    return agreement


def _digest(head) -> str | None:
    """What identifies a head's scores: its config and weights (None without a head)."""
    if head is None:
        return None
    h = hashlib.sha256(json.dumps(head.config(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(head.state_dict().items()):
        h.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def split_held_out(pixels, calibrate: int) -> tuple[list, Any, bool]:
    """(calibration images, held-out images, whether they differ): the first `calibrate`, then the rest.

    With no image left after `calibrate`, a third is held out; with fewer than 3 images, all serve both.
    """
    if len(pixels) <= calibrate:
        calibrate = len(pixels) - len(pixels) // 3
    if calibrate >= len(pixels):
        return list(pixels), pixels, False
    return list(pixels[:calibrate]), pixels[calibrate:], True


def int8_agreement(reference: Encoder, compiled: Encoder, pixels: torch.Tensor, head=None, **kwargs) -> Agreement:
    """Agreement of `compiled` with the exact torch fp32 `reference` on preprocessed images."""
    dtype, reference.autocast_dtype = reference.autocast_dtype, torch.float32
    try:
        exact = torch.cat([reference.encode_image(p) for p in pixels.split(64)])
    finally:
        reference.autocast_dtype = dtype
    got = torch.cat([compiled.encode_image(p) for p in pixels.split(64)])
    return measure_agreement(exact, got, head, **kwargs)


def check_agreement(agreement: Agreement, engine: str, min_agreement: float, strict: bool) -> None:
    """Print int8's agreement; below `min_agreement`, warn, or refuse when `strict`."""
    say(f"int8 ({engine}): {agreement.summary()}")
    if agreement.top1 >= min_agreement:
        return
    text = (
        f"int8 top-1 agreement {100 * agreement.top1:.1f}% is below --min-agreement {100 * min_agreement:g}%: "
        "calibrate on more images (--calibration-images), or drop --quantize for the exact fp32 results"
    )
    if strict:
        raise PictagError(text)
    say(f"warning: {text}")


def choose_engine(
    encoder: Encoder,
    *,
    quantize: str | None = None,
    calibration=None,
    batch_size: int = 32,
    rounds: int = 3,
    requested: str | None = None,
) -> str:
    """The fastest installed engine for this encoder, precision and machine, measured once and cached.

    Each candidate embeds the same batch, alternating, `rounds` times; the best pass of each counts. The choice
    is kept in $PICTAG_CACHE/engines/auto, keyed by the model, precision, quantization, CPU, threads and versions.
    """
    if encoder.device.type != "cpu":
        say(f"--engine auto: torch, on {encoder.device} (the compiled engines here run on the CPU)")
        return "torch"
    precision = precision_of(encoder)
    batch = max(1, min(batch_size, 32))
    key = {
        "spec": encoder.spec,
        "weights_id": encoder.weights_id,
        "precision": precision,
        "quantize": quantize,
        "batch": batch,
        "machine": _machine(),
        "versions": {**library_versions(), **{n: r.versions() for n, r in RUNTIMES.items() if r.installed()}},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "engines" / "auto" / f"{digest}.json"
    try:
        saved = json.loads(path.read_text())
        say(f"--engine auto: {saved['engine']}, measured earlier on this machine: {_rates(saved)}")
        return saved["engine"]
    except (OSError, ValueError, KeyError):
        pass
    candidates, skipped = {}, {}
    if not quantize:
        candidates["torch"] = encoder
    for name in RUNTIMES:
        try:
            precision_here, _ = engine_precision(encoder, name, requested)
            candidates[name] = compile_encoder(
                encoder, name, quantize=quantize, calibration=calibration, precision=precision_here
            )
        except PictagError as exc:
            skipped[name] = str(exc)
    if not candidates:
        raise PictagError(f"--engine auto found no engine for {quantize or precision}: {'; '.join(skipped.values())}")
    height, width = encoder.preprocess.size
    pixels = torch.randn(batch, 3, height, width)  # speed does not depend on the pixels
    rates = {name: 0.0 for name in candidates}
    for _ in range(rounds):
        for name, candidate in candidates.items():
            started = time.perf_counter()
            candidate.encode_image(pixels)
            rates[name] = max(rates[name], len(pixels) / (time.perf_counter() - started))
    best = max(rates, key=rates.get)
    saved = {"engine": best, "rates": rates, "precision": quantize or precision, "batch": batch, "skipped": skipped}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        f.write(json.dumps(saved))
    say(f"--engine auto: {best}, the fastest here: {_rates(saved)}")
    return best


def _rates(saved: dict) -> str:
    rates = ", ".join(f"{name} {rate:.1f} img/s" for name, rate in sorted(saved["rates"].items(), key=lambda r: -r[1]))
    skipped = "".join(f"; not {name}: {why}" for name, why in saved.get("skipped", {}).items())
    return f"{rates} ({saved['precision']}, batch {saved['batch']}, {torch.get_num_threads()} threads){skipped}"


def _machine() -> dict:
    """What makes one machine's speeds differ from another's: CPU model, its features, threads."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and not model:
                    model = value.strip()
                elif name.strip() == "flags":
                    flags = hashlib.sha256(value.strip().encode()).hexdigest()[:12]
                    break
    except OSError:
        pass
    return {"cpu": model or platform.machine(), "flags": flags, "threads": torch.get_num_threads()}
