"""The `mmntp data` command group: prepare, inspect, train-bpe, shapes.

    mmntp data prepare --manifest FILE.jsonl --out DIR [--config experiments/x.py]
                       [--text-tokenizer bytes|tokenizer.json] [--seq-len T] [--workers N]
                       [--process-index I --process-count N] [--on-error raise|skip]
    mmntp data inspect DIR [--samples N] [--json]
    mmntp data train-bpe (--manifest FILE | --files F …) --vocab-size N --out tokenizer.json
    mmntp data shapes --out DIR [--items N]          (the captioned-shapes manifest)
    mmntp data classes --out DIR [--items N] [--heldout N]   (a ten-class captioned set)

With `--config`, `train.seq_len` bounds the block length, and the experiment
file may define `get_tokenizers()` returning {"image": ModalityEncoder(…) or
(tokenizer, params), …, "text": "bytes" or a tokenizer.json path}.
"""

from __future__ import annotations

import argparse
import json
import sys


def _experiment_tokenizers(path: str) -> dict:
    if not path.endswith(".py"):  # a resolved config.json names no tokenizers
        return {}
    from mmntp_jax.experiment_file import call_in, load_module

    module = load_module(path)
    return dict(call_in(path, module.get_tokenizers, "get_tokenizers")) if hasattr(module, "get_tokenizers") else {}


def _prepare(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.data.prepare import PrepareOptions, Preparer

    encoders, text, seq_len = {}, args.text_tokenizer, args.seq_len
    if args.config:
        from mmntp_jax.config import load_config

        config = load_config(args.config)
        seq_len = seq_len or config.train.seq_len
        encoders = _experiment_tokenizers(args.config)
        text = encoders.pop("text", None) if args.text_tokenizer is None else args.text_tokenizer
    text_obj = None if text is None or isinstance(text, str) else text
    options = PrepareOptions(
        text_tokenizer=text if isinstance(text, str) else "bytes", seq_len=seq_len, docs_per_shard=args.docs_per_shard,
        group_size=args.group_size, workers=args.workers, process_index=args.process_index, process_count=args.process_count,
        on_error=args.on_error, layout=args.layout, progress=not args.no_progress and not args.json,
    )
    try:
        summary = Preparer(args.manifest, args.out, options, encoders, text_obj).run()
    except ValueError as err:  # ManifestError, MediaError, BlockTooLongError, bad settings
        raise CommandError(str(err)) from None
    if args.json:
        print(json.dumps(summary))
    elif summary["complete"]:
        skipped = f"; skipped {summary['skipped']} bad documents (listed in {args.out}/report.json)" if summary["skipped"] else ""
        print(f"{args.out}: {summary['docs']} documents, {summary['tokens']} tokens in {summary['shards']} shards "
              f"({summary['prepared_now']} prepared now){skipped}")
    else:
        print(f"{args.out}: prepared {summary['prepared_now']} shards; {summary['missing']} of {summary['shards']} shards "
              "belong to other processes and are not done yet; the last process to finish writes dataset.json")
    return 0


def _inspect(args) -> int:
    from mmntp_jax.data.summary import describe, format_summary

    try:
        info = describe(args.dir, samples=args.samples)
    except ValueError as err:
        from mmntp_jax.cli import CommandError

        raise CommandError(str(err)) from None
    print(json.dumps(info) if args.json else format_summary(info))
    return 0


def _train_bpe(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.data.prepare import manifest_texts
    from mmntp_jax.tokenizers.text import BPETokenizer

    if bool(args.manifest) == bool(args.files):
        raise CommandError("give exactly one of --manifest or --files")
    try:
        if args.manifest:
            tok = BPETokenizer.train(manifest_texts(args.manifest, args.on_error), args.vocab_size)
        else:
            tok = BPETokenizer.train_from_files(args.files, args.vocab_size)
    except ValueError as err:
        raise CommandError(str(err)) from None
    tok.save(args.out)
    print(f"{args.out}: byte-level BPE with {tok.size} tokens")
    return 0


def _shapes(args) -> int:
    from mmntp_jax.data.captioned import write_captioned_shapes

    manifest = write_captioned_shapes(args.out, args.items, size=args.size, seed=args.seed, progress=not args.no_progress)
    print(f"{manifest}: {2 * args.items} documents (image→caption and caption→image) over {args.items} images")
    return 0


def _classes(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.data.class_captioned import write_class_captioned

    try:
        train, heldout = write_class_captioned(args.out, args.items, seed=args.seed, heldout=args.heldout, size=args.size)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(f"{train}: {2 * args.items} documents over {args.items} images; {heldout}: {args.heldout} held-out pairs")
    return 0


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser("prepare", help="tokenize a manifest into shards")
    p.add_argument("--manifest", required=True, help="JSONL or Parquet manifest of documents")
    p.add_argument("--out", required=True, help="output folder (resumable: finished shards are kept)")
    p.add_argument("--config", help="experiment file: train.seq_len and optional get_tokenizers()")
    p.add_argument("--text-tokenizer", default=None, help="'bytes' (default) or a tokenizer.json path")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length; longer blocks are errors")
    p.add_argument("--docs-per-shard", type=int, default=1024)
    p.add_argument("--group-size", type=int, default=64, help="documents tokenized together")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--process-index", type=int, default=0, help="this host's index when several hosts split one manifest")
    p.add_argument("--process-count", type=int, default=1)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="skip: leave bad documents out and report them")
    p.add_argument("--layout", choices=("per_level", "interleaved"), default="per_level", help="vocab layout of multi-level codes")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(data_func=_prepare)

    p = sub.add_parser("inspect", help="counts, length histogram and a decoded sample of a prepared folder")
    p.add_argument("dir")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(data_func=_inspect)

    p = sub.add_parser("train-bpe", help="train a byte-level BPE text tokenizer")
    p.add_argument("--manifest", help="train on the text segments of this manifest")
    p.add_argument("--files", nargs="+", help="or on these text files")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, help="tokenizer.json to write")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.set_defaults(data_func=_train_bpe)

    p = sub.add_parser("shapes", help="write the captioned-shapes manifest (generated images and captions)")
    p.add_argument("--out", required=True, help="folder for images/ and manifest.jsonl")
    p.add_argument("--items", type=int, default=4000, help="number of images (two documents each)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(data_func=_shapes)

    p = sub.add_parser("classes", help="write a ten-class captioned image set: TRAIN.jsonl and HELDOUT.jsonl")
    p.add_argument("--out", required=True, help="folder for images/, TRAIN.jsonl and HELDOUT.jsonl")
    p.add_argument("--items", type=int, default=900, help="training images (two documents each)")
    p.add_argument("--heldout", type=int, default=100, help="held-out images")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(data_func=_classes)

    def dispatch(args) -> int:
        if getattr(args, "data_func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return args.data_func(args)

    parser.set_defaults(func=dispatch)
    return parser
