"""``crocnet`` command line: one subcommand per job, each implemented as ``main(argv)`` in its module."""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module with ``main(argv) -> int``, one-line help)
SUBCOMMANDS = {
    "demo": ("crocnet.train.demo", "the whole pipeline on synthetic phantoms: data, stage 1, crops, stage 2, report"),
    "phantom": ("crocnet.data.phantom", "write synthetic cardiac phantoms in the M&Ms-2 layout"),
    "splits": ("crocnet.data.splits", "write subject-level split and k-fold lists as JSON"),
    "train": ("crocnet.train.train", "train a stage-1 or stage-2 model (one fold or all)"),
    "evaluate": ("crocnet.train.evaluate", "evaluate checkpoints: per-case CSV, summary JSON, Table-1 style table"),
    "compare": ("crocnet.train.compare", "paired comparison of two evaluations: differences, bootstrap CI, Wilcoxon test"),
    "predict": ("crocnet.train.predict", "segment NIfTI files with a checkpoint"),
    "export": ("crocnet.train.export", "write a checkpoint's weights as .safetensors (--half: float16)"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: crocnet <command> [options]   (crocnet <command> -h for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from crocnet import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"crocnet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
