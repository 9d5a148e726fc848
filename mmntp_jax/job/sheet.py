"""The sample sheet: what a multimodal run draws and says, beside the truth, as one PNG.

Dimensions: N rows (held-out items), H, W image size, C = 3 channels.

Each row is one held-out item: its real image, the image the model drew for its
reference caption, then two lines of text — the reference caption, and the
caption the model wrote for the real image. Images are scaled up `scale`× with
nearest-neighbour so pixels stay visible; text uses PIL's built-in bitmap font
(no font files needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT_WIDTH = 560  # pixels of text beside the images
LINE = 12  # pixels per text line


def _wrap(text: str, width_chars: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines or [""]


def sample_sheet(real_NHWC, drawn_NHWC, references: list[str], captions: list[str], *, scale: int = 3) -> np.ndarray:
    """uint8 [rows·h, w, 3] sheet (see the module docstring)."""
    from PIL import Image, ImageDraw

    n, h, w, _ = np.asarray(real_NHWC).shape
    cell = h * scale
    row_h = max(cell, LINE * 6) + 6
    sheet = Image.new("RGB", (2 * cell + 12 + TEXT_WIDTH, n * row_h + LINE + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "real", fill="black")
    draw.text((cell + 8, 2), "drawn", fill="black")
    draw.text((2 * cell + 12, 2), "reference caption / model's caption of the real image", fill="black")
    chars = TEXT_WIDTH // 6
    for i in range(n):
        top = LINE + 6 + i * row_h
        for k, image in enumerate((real_NHWC[i], drawn_NHWC[i])):
            pixels = np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8)
            sheet.paste(Image.fromarray(pixels).resize((cell, cell), Image.NEAREST), (k * (cell + 4) + 4, top))
        lines = [("ref: ", references[i], "black"), ("out: ", captions[i], "darkblue")]
        y = top
        for label, text, colour in lines:
            for j, part in enumerate(_wrap(text, chars - 5)):
                draw.text((2 * cell + 12, y), (label if j == 0 else "     ") + part, fill=colour)
                y += LINE
    return np.asarray(sheet)


def write_sheet(path, sheet_HWC: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(sheet_HWC).save(tmp)
    tmp.replace(path)
    return path
