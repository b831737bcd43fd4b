"""`ward model`: where a model lives, and importing GGUF files."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("path", help="print the directory of a model (converting a packaged one on first use)")
    p.add_argument("name")
    p.add_argument("--data-dir", default=None)
    g = sub.add_parser("import-gguf", help="write a Hugging Face model directory from a GGUF file")
    g.add_argument("file")
    g.add_argument("dir")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--dequantize", action="store_true",
                   help="expand Q4/Q8 projections to --dtype (default: keep them quantized in Ward's layout)")
    sub.add_parser("list", help="list the packaged model names")


def run(args: argparse.Namespace) -> int:
    from worker.errors import ModelLoadError
    from worker.model import registry

    try:
        if args.action == "path":
            print(registry.resolve_model(args.name, args.data_dir))
        elif args.action == "import-gguf":
            from worker.model.gguf_import import import_gguf

            print(import_gguf(args.file, args.dir, dtype=args.dtype, keep_quantized=not args.dequantize))
        elif args.action == "list":
            for name, entry in registry.PACKAGED_MODELS.items():
                print(f"{name}\t{entry.task}\t(pip package {entry.pip_name})")
    except ModelLoadError as exc:
        print(f"ward model: {exc}", file=sys.stderr)
        return 1
    return 0
