"""``unetkit``: one command, subcommands that turn arguments into a config and call one function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from unetkit.cli import commands

# Command-line flag -> config key. Every other key is reachable as a trailing `section.key=value`.
TRAIN_FLAGS = {
    "dataset": "data.dataset",
    "data_root": "data.root",
    "mode": "data.mode",
    "model": "model.name",
    "num_classes": "task.num_classes",
    "img_size": "data.img_size",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "loss": "loss.spec",
    "optimizer": "optim.optimizer",
    "scheduler": "optim.scheduler",
    "accum_steps": "train.accum_steps",
    "amp": "train.amp",
    "seed": "train.seed",
    "device": "train.device",
    "out": "train.out",
    "resume": "train.resume",
    "augment": "data.augment",
    "monitor": "train.monitor",
    "workers": "data.num_workers",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetkit", description="Train, evaluate and deploy U-Net segmentation models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    info = sub.add_parser("list", help="list models, presets and datasets")
    info.set_defaults(handler=commands.list_things)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: a small U-Net on built-in synthetic data)",
        epilog="Any config key can be set with trailing section.key=value pairs, e.g. "
        "optim.weight_decay=0 model.options.depth=3. See `unetkit list` for presets.",
    )
    p.add_argument("--config", help="a YAML file or a preset name (see `unetkit list`)")
    p.add_argument("--dataset", help="synthetic (default) or folder")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--mode", help="dataset variant, e.g. oxford-pet: binary or trimap")
    p.add_argument("--model", help="model name from the registry")
    p.add_argument("--num-classes", type=int, help="classes including background; 2 = binary")
    p.add_argument("--img-size", type=int, nargs="+", metavar=("H", "W"), help="training size")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--loss", help="weighted sum, e.g. ce:0.7,dice:0.3 (ce/bce/dice/focal)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--scheduler", choices=["cosine", "plateau", "poly", "none"])
    p.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<model>-<time>)")
    p.add_argument("--resume", help="checkpoint to continue from (RUN/checkpoints/last.pt)")
    p.add_argument("--augment", choices=["none", "light", "strong"])
    p.add_argument("--monitor", help="val_loss or val_<metric> picking best.pt")
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any config key")
    p.set_defaults(handler=commands.train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a checkpoint on a split, at original resolution"
    )
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best.pt")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-root", help="default: the checkpoint's data root")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", help="folder for metrics.json (default: the run folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=commands.evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write masks for new images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="an image file, a folder (recursive) or a glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=commands.predict)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except commands.USER_ERRORS as error:
        if os.environ.get("UNETKIT_DEBUG"):
            raise
        print(f"unetkit {args.command}: error: {error}", file=sys.stderr)
        print("(set UNETKIT_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
