"""CPU cost of the video refiner next to simpler references, measured in the same run.

Models (all from the same feature layers, at the same resolution):

* ``refiner``: the VideoRefiner "tiny" config (U-Net, factorised spatio-temporal attention at the
  1/4 bottleneck, recurrent warped previous output).
* ``no-attention``: the same refiner with the bottleneck attention dropped (config ``attention=False``).
* ``plain-unet``: a plain conv U-Net with the same encoder/decoder widths, no attention, no
  recurrence (frames processed independently as one batch).

Per model: training throughput (frames/s: clips of ``--clip`` frames, forward + backward + Adam
step), inference time (ms per frame, a ``--frames``-frame clip without gradients) and peak memory
(the process's peak resident set above its level once model and inputs exist, read from
``ru_maxrss`` in a fresh subprocess per model and mode, so one measurement does not hide another).
The table reports absolute figures (for this machine only) and ratios against ``refiner``; the
ratios are what carries over between machines.

Run: ``.venv/bin/python benchmarks/bench_neural.py [--width 64 --height 48 --threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODELS = ("refiner", "no-attention", "plain-unet")


def _plain_unet(config):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from hybridsim.neural.refiner import _conv_block, feature_channels

    class PlainUNet(nn.Module):
        """Same conv widths as the refiner, frames independent, no attention, no warped input."""

        def __init__(self):
            super().__init__()
            c0, c1, c2 = config.channels
            cin = feature_channels(config)
            self.enc0, self.enc1, self.enc2 = _conv_block(cin, c0), _conv_block(c0, c1, 2), _conv_block(c1, c2, 2)
            self.dec1, self.dec0 = _conv_block(c2 + c1, c1), _conv_block(c1 + c0, c0)
            self.head = nn.Conv2d(c0, 3, 3, padding=1)

        def forward(self, features, flow_backward=None, occlusion_backward=None):
            x = features.permute(0, 3, 1, 2)
            e0 = self.enc0(x)
            e1 = self.enc1(e0)
            e2 = self.enc2(e1)
            d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode="bilinear"), e1], 1))
            d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode="bilinear"), e0], 1))
            logit = torch.logit(x[:, :3].clamp(1e-3, 1 - 1e-3))
            return torch.sigmoid(logit + self.head(d0)).permute(0, 2, 3, 1)

    return PlainUNet()


def _model(name: str):
    import dataclasses

    from hybridsim.neural.refiner import CONFIGS, VideoRefiner

    tiny = CONFIGS["tiny"]
    if name == "refiner":
        return VideoRefiner(tiny)
    if name == "no-attention":
        return VideoRefiner(dataclasses.replace(tiny, attention=False))
    if name == "plain-unet":
        return _plain_unet(tiny)
    raise SystemExit(f"unknown model {name}")


def _inputs(frames: int, height: int, width: int):
    import torch

    from hybridsim.neural.refiner import CONFIGS, layer_features

    g = torch.Generator().manual_seed(0)
    layers = {"rgb": torch.rand(frames, height, width, 3, generator=g),
              "depth": 1 + 5 * torch.rand(frames, height, width, generator=g),
              "normal": torch.randn(frames, height, width, 3, generator=g),
              "segmentation": torch.randint(0, 4, (frames, height, width), generator=g),
              "alpha": torch.rand(frames, height, width, generator=g)}
    features = layer_features(layers, CONFIGS["tiny"])
    flow = torch.randn(frames, height, width, 2, generator=g)
    occlusion = torch.rand(frames, height, width, generator=g) < 0.1
    target = torch.rand(frames, height, width, 3, generator=g)
    return features, flow, occlusion, target


def child(name: str, mode: str, args) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model(name)
    params = sum(p.numel() for p in model.parameters())
    if mode == "train":
        features, flow, occlusion, target = _inputs(args.clip, args.height, args.width)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            out = model(features, flow, occlusion)
            loss = (out - target).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()  # warm-up (allocations, lazy init); counts towards the peak
        started = time.perf_counter()
        for _ in range(args.repeats):
            step()
        elapsed = time.perf_counter() - started
        value = args.repeats * args.clip / elapsed
    else:
        features, flow, occlusion, _ = _inputs(args.frames, args.height, args.width)
        model.eval()
        with torch.no_grad():
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            model(features, flow, occlusion)  # warm-up; counts towards the peak
            started = time.perf_counter()
            for _ in range(args.repeats):
                model(features, flow, occlusion)
            elapsed = time.perf_counter() - started
        value = 1000.0 * elapsed / (args.repeats * args.frames)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"model": name, "mode": mode, "value": value, "peak_mib": max(peak - base, 0) / 1024.0,
            "params": params}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--clip", type=int, default=4, help="training clip length (frames)")
    parser.add_argument("--frames", type=int, default=16, help="inference clip length (frames)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args)))
        return 0
    passthrough = ["--width", str(args.width), "--height", str(args.height), "--clip", str(args.clip),
                   "--frames", str(args.frames), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    results = {}
    for name in MODELS:
        for mode in ("train", "infer"):
            out = subprocess.run([sys.executable, __file__, "--child", name, mode, *passthrough], check=True,
                                 capture_output=True, text=True)
            results[(name, mode)] = json.loads(out.stdout.strip().splitlines()[-1])
    ref_train, ref_infer = results[("refiner", "train")], results[("refiner", "infer")]
    print(f"video refiner on CPU ({args.threads} thread(s)), {args.width}x{args.height}, training clips of "
          f"{args.clip} frames, inference clips of {args.frames} frames, {args.repeats} repeats")
    header = (f"{'model':<14}{'params':>9}{'train fr/s':>12}{'x ref':>7}{'infer ms/fr':>13}{'x ref':>7}"
              f"{'train peak MiB':>16}{'x ref':>7}{'infer peak MiB':>16}{'x ref':>7}")
    print(header)
    rows = []
    for name in MODELS:
        train, infer = results[(name, "train")], results[(name, "infer")]
        ratio = lambda a, b: a / b if b > 0 else float("nan")  # noqa: E731
        row = {"model": name, "params": train["params"], "train_frames_per_s": train["value"],
               "train_ratio": ratio(train["value"], ref_train["value"]), "infer_ms_per_frame": infer["value"],
               "infer_ratio": ratio(infer["value"], ref_infer["value"]), "train_peak_mib": train["peak_mib"],
               "train_peak_ratio": ratio(train["peak_mib"], ref_train["peak_mib"]),
               "infer_peak_mib": infer["peak_mib"], "infer_peak_ratio": ratio(infer["peak_mib"], ref_infer["peak_mib"])}
        rows.append(row)
        print(f"{name:<14}{row['params']:>9}{row['train_frames_per_s']:>12.1f}{row['train_ratio']:>7.2f}"
              f"{row['infer_ms_per_frame']:>13.2f}{row['infer_ratio']:>7.2f}{row['train_peak_mib']:>16.1f}"
              f"{row['train_peak_ratio']:>7.2f}{row['infer_peak_mib']:>16.1f}{row['infer_peak_ratio']:>7.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
