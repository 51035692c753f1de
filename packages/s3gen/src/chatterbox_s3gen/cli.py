"""``chatterbox-s3gen`` command line: ONNX export and random checkpoints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatterbox-s3gen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export-onnx",
        help="export the flow estimator and the HiFT vocoder to ONNX (needs the onnx extra)",
    )
    export.add_argument(
        "checkpoint",
        help="checkpoint directory (s3gen.safetensors or s3gen.pt [+ s3gen_config.json])",
    )
    export.add_argument("out_dir", help="directory for flow_estimator.onnx and hift.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")

    random = commands.add_parser(
        "write-random-checkpoint", help="write a random-weight checkpoint in the released layout"
    )
    random.add_argument("out_dir")
    random.add_argument("--size", choices=("tiny", "full"), default="tiny")
    random.add_argument("--seed", type=int, default=0)
    random.add_argument(
        "--format",
        choices=("safetensors", "pt", "meanflow"),
        default="safetensors",
        help="s3gen.safetensors (English release), s3gen.pt (multilingual release, torch.save) "
        "or s3gen_meanflow.safetensors (Turbo release: the meanflow decoder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command: exit 0, 1 for a checkpoint or a path it cannot use (one line on stderr
    naming it, never a traceback), 2 for a bad command line."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from chatterbox_s3gen.errors import S3GenError

    try:
        return _run(args)
    except S3GenError as error:
        message = str(error)
    except OSError as error:  # the output directory: Python's words, with the path it names
        where = f" {error.filename}" if error.filename else ""
        message = f"cannot write{where}: {error.strerror or error}"
    print(f"chatterbox-s3gen {args.command}: error: {message}", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "export-onnx":
        try:
            from chatterbox_s3gen.onnx_export import export_onnx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            print(
                f"export-onnx needs the onnx extra (pip install 'chatterbox-s3gen[onnx]'): {exc}",
                file=sys.stderr,
            )
            return 2
        paths = export_onnx(args.checkpoint, args.out_dir, opset=args.opset)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    from chatterbox_s3gen.random_checkpoint import write_random_s3gen_checkpoint

    print(
        write_random_s3gen_checkpoint(
            args.out_dir, size=args.size, seed=args.seed, file_format=args.format
        )
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
