"""`mmntp sample`: text, images, audio and captions from a trained workdir.

    mmntp sample --workdir DIR --prompt "def "                              # text → text
    mmntp sample --workdir DIR --prompt "a red circle …" --generate image    # caption → image (PNG)
    mmntp sample --workdir DIR --image photo.png                             # image → caption
    mmntp sample --workdir DIR --prompt "seven" --generate audio             # text → audio (WAV)
    mmntp sample --workdir DIR --audio clip.wav                              # audio → text

The prompt is the media item (`--image` / `--audio`), then the text (`--prompt`),
then a request for `--generate` (default text), encoded as training documents
are. Text goes to stdout; media items are written as PNG (images) or WAV
(audio) under `--out` (default WORKDIR/samples), whose paths are printed; every
sample is also appended to OUT/samples.jsonl.
"""

from __future__ import annotations

import json

MEDIA_SUFFIX = {"image": "png", "audio": "wav", "video": "gif"}


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--prompt", default="", help="text prompt (default: empty)")
    media = parser.add_mutually_exclusive_group()
    media.add_argument("--image", default=None, help="image file put before the text prompt (PNG/JPEG, fitted to the tokenizer's size)")
    media.add_argument("--audio", default=None, help="WAV file put before the text prompt (mixed to mono, at the tokenizer's sample rate; cut or zero-padded to its clip length)")
    parser.add_argument("--generate", choices=("text", "image", "audio", "video"), default="text", help="what to generate (default text)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="text: the most new tokens (media blocks have their tokenizer's length)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default; media of a captioned job: the job's job.temperature, as its evaluation draws)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale S (1 = unguided, the default; media of a captioned job: its job.guidance)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for media files and samples.jsonl (default WORKDIR/samples)")
    parser.set_defaults(func=run_sample)


def prompt_segments(args) -> list[dict]:
    segments = []
    if args.image:
        segments.append({"type": "image", "path": args.image})
    if args.audio:
        segments.append({"type": "audio", "path": args.audio})
    if args.prompt or not segments:
        segments.append({"type": "text", "text": args.prompt})
    return segments + [{"type": args.generate}]


def save_media(path, modality: str, item, run) -> None:
    from mmntp_jax.tokenizers import media

    if modality == "image":
        media.save_image(path, item)
    elif modality == "audio":
        media.save_wav(path, item, run.media.tokenizer("audio").config.sample_rate)
    else:
        media.save_gif(path, item)


def sampling_defaults(args, config) -> tuple[float, float]:
    """--temperature and --guidance as given, else the captioned job's drawing settings for
    media (what its evaluation and sheet use), else greedy and unguided."""
    job = config.job if config.job.kind == "captioned" and args.generate != "text" else None
    temperature = args.temperature if args.temperature is not None else (job.temperature if job else 0.0)
    guidance = args.guidance if args.guidance is not None else (job.guidance if job else 1.0)
    return temperature, guidance


def run_sample(args) -> int:
    from pathlib import Path

    from mmntp_jax.api import load
    from mmntp_jax.cli import CommandError
    from mmntp_jax.generation.prompts import PromptError
    from mmntp_jax.generation.sample import generate
    from mmntp_jax.tokenizers.media import MediaError

    if args.num_samples < 1:
        raise CommandError(f"--num-samples {args.num_samples}: must be ≥ 1")
    run = load(args.workdir, step=args.step)
    args.temperature, args.guidance = sampling_defaults(args, run.config)
    segments = prompt_segments(args)
    try:
        results = generate(run, [segments] * args.num_samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, guidance=args.guidance)
    except (PromptError, MediaError) as err:
        raise CommandError(str(err)) from None
    out = Path(args.out) if args.out else Path(str(run.workdir)) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    record = {"step": run.step, "prompt": args.prompt, "image": args.image, "audio": args.audio, "generate": args.generate,
              "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "guidance": args.guidance, "seed": args.seed}
    existing = len(list(out.glob(f"{args.generate}_*.{MEDIA_SUFFIX.get(args.generate, 'txt')}")))
    with (out / "samples.jsonl").open("a") as f:
        for k, result in enumerate(results):
            if result["type"] == "text":
                print(args.prompt + result["text"])
                f.write(json.dumps({**record, "text": result["text"]}) + "\n")
            else:
                path = out / f"{result['type']}_{existing + k:04d}.{MEDIA_SUFFIX[result['type']]}"
                save_media(path, result["type"], result[result["type"]], run)
                print(path)
                f.write(json.dumps({**record, "path": str(path), "ids": result["ids"].tolist()}) + "\n")
    return 0
