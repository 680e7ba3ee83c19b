"""``keyprop train CONFIG.yaml`` and ``keyprop finetune --model M --plate P --mask P --keys P --out M2``.

``add_parser(subparsers)`` adds both subcommands to the keyprop CLI; ``run(args)`` runs the
one chosen and returns the exit code (0 done, 2 bad input with one line on stderr, 1 other).
"""
from __future__ import annotations

import logging
import sys

__all__ = ["add_parser", "run", "COMMANDS"]

COMMANDS = ("train", "finetune")


def add_parser(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model from a YAML config (resumes its run folder)")
    train.add_argument("config", help="training config (YAML); see core/training/configs/small_cpu.yaml")
    train.add_argument("--steps", type=int, default=None, help="override train.steps")
    train.add_argument("--run-dir", default=None, help="override run_dir")
    train.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override train.device")
    train.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    train.add_argument("--workers", type=int, default=None,
                       help="override data.workers (processes making examples; e.g. 12 beside a GPU)")
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    ft = subparsers.add_parser("finetune", help="adapt a model to one shot, self-supervised on its keyframes")
    ft.add_argument("--model", default="default", help="keyprop .pt to start from (default: the shipped model)")
    ft.add_argument("--plate", required=True, help="plate frames, e.g. plate.%%04d.png or plate.####.exr")
    ft.add_argument("--mask", required=True, help="mask frames (white = fill)")
    ft.add_argument("--keys", required=True, help="clean keyframes (frames present are the keyframes)")
    ft.add_argument("--out", required=True, help="where to write the adapted model (.pt)")
    ft.add_argument("--minutes", type=float, default=5.0, help="time budget (default 5)")
    ft.add_argument("--size", type=int, default=192, help="crop side in pixels (default 192)")
    ft.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    ft.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--max-steps", type=int, default=None, help="stop after this many steps too")
    ft.add_argument("--quiet", action="store_true", help="no progress lines")


def _progress(quiet: bool):
    def report(event):
        if quiet:
            return
        if event.get("event") == "validate":
            print(f"step {event['step']}: validation in-mask PSNR {event['psnr']:.2f} dB, SSIM {event['ssim']:.3f}"
                  + (" (best)" if event.get("best") else ""), flush=True)
        elif event.get("event") == "train":
            terms = " ".join(f"{k} {v:.4f}" for k, v in event.items()
                             if k not in ("event", "step", "lr", "s_per_step", "eta_s"))
            print(f"step {event['step']}: {terms}  lr {event['lr']:.2e}  {event['s_per_step']:.2f} s/step  "
                  f"eta {event['eta_s'] / 60:.0f} min", flush=True)
        elif "message" in event:
            print(event["message"], flush=True)
    return report


def run(args) -> int:
    logging.basicConfig(level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
                        format="%(message)s")
    from ..errors import KeypropInputError
    from .loop import ConfigError

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "finetune":
            return _finetune(args)
    except (ConfigError, FileNotFoundError, KeypropInputError, ValueError, ImportError) as exc:
        print(f"keyprop {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keyprop {args.command}: interrupted (the last checkpoint is kept)", file=sys.stderr)
        return 1
    print(f"keyprop: unknown training command {args.command!r}", file=sys.stderr)
    return 2


def _train(args) -> int:
    from .loop import load_config, train

    cfg = load_config(args.config)
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.run_dir is not None:
        cfg.run_dir = args.run_dir
    if args.device is not None:
        cfg.train.device = args.device
    if args.workers is not None:
        cfg.data.workers = args.workers
    result = train(cfg, progress=_progress(args.quiet),
                   max_seconds=args.minutes * 60 if args.minutes is not None else None)
    if not args.quiet:
        print(f"done: step {result['step']}, best validation in-mask PSNR {result['best_psnr']:.2f} dB; "
              f"weights in {cfg.run_dir}/model_best.pt and model_last.pt")
    return 0


def _finetune(args) -> int:
    from .finetune import finetune_shot

    result = finetune_shot(model=args.model, plate=args.plate, mask=args.mask, keys=args.keys, out=args.out,
                           minutes=args.minutes, size=args.size, lr=args.lr, device=args.device, seed=args.seed,
                           max_steps=args.max_steps, progress=_progress(args.quiet))
    if not args.quiet:
        print(f"done: {result['steps']} steps in {result['wall_s']:.0f} s; held-out keyframe in-mask PSNR "
              f"{result['psnr_before']:.2f} -> {result['psnr_after']:.2f} dB; wrote {args.out}")
    return 0
