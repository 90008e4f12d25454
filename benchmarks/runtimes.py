"""Encoder speed by runtime: ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16 on one graph, in streams or not.

Images already decoded and preprocessed (random frames at the encoder's input size), a batch of
``--batch`` on every core of this process, rounds interleaved so that the machine's load swings hit every
runtime alike; prints images/s (median of the rounds), the ratio to ONNX Runtime measured in the same run,
the process's CPU time per image, and how far each runtime's features are from ONNX Runtime's (largest relative
difference, lowest cosine). Each runtime runs in streams (the default: a batch in parts side by side) and as one
request over every thread ("1 stream", as before streams).
Run: ``python benchmarks/runtimes.py [--encoder efficientnet-lite0/layout] [--batch 32] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from geoscope.distributed import cpu_count
from geoscope.encoders.image import get_image_encoder
from geoscope.encoders.runtime import BF16_FLAGS, Runtime, cpu_flags, openvino_installed

RUNTIMES = (Runtime("onnxruntime"), Runtime("openvino", "fp32"), Runtime("openvino", "bf16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet-lite0/layout")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runtimes = RUNTIMES if openvino_installed() else RUNTIMES[:1]
    encoders = {}
    for runtime in runtimes:  # in streams (the default), and as one request over every thread
        encoders[str(runtime)] = get_image_encoder(args.encoder, runtime=runtime)
        encoders[f"{runtime}, 1 stream"] = get_image_encoder(args.encoder, runtime=runtime, streams=1)
    size = next(iter(encoders.values())).preprocess.crop_size
    batch = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    outputs = {name: encoder.encode(batch) for name, encoder in encoders.items()}  # compiled before the clock
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            start, used = time.perf_counter(), time.process_time()
            encoder.encode(batch)
            rates[name].append(args.batch / (time.perf_counter() - start))
            cpu[name].append((time.process_time() - used) / args.batch)
    reference = outputs[str(RUNTIMES[0])]
    base = float(np.median(rates[str(RUNTIMES[0])]))
    bf16 = ", ".join(sorted(BF16_FLAGS & cpu_flags())) or "none"
    print(f"{args.encoder}, batch {args.batch}, {size} px, {cpu_count()} cores, native bf16: {bf16}, "
          f"{args.rounds} interleaved rounds")
    print(f"{'runtime':<28} {'images/s':>9} {'× ORT':>6} {'CPU ms/image':>13} {'max rel diff':>13} {'min cosine':>11}")
    for name, out in outputs.items():
        rate = float(np.median(rates[name]))
        diff = float(np.abs(out - reference).max() / np.abs(reference).max())
        cosine = float(((out * reference).sum(1) / np.linalg.norm(out, axis=1)
                        / np.linalg.norm(reference, axis=1)).min())
        used = float(np.median(cpu[name])) * 1000
        print(f"{name:<28} {rate:>9.1f} {rate / base:>6.2f} {used:>13.2f} {diff:>13.2e} {cosine:>11.6f}")


if __name__ == "__main__":
    main()
