"""Drawing the synthetic scenes: shapes on a 3x3 grid, a word in PIL's built-in bitmap font (the same pixels on every
machine), mild seeded background noise; and ``ImageWriter``, which saves every image of a benchmark once."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scenes import COLORS, WORDS, Scene, SceneObject, caption

__all__ = ["BACKGROUND", "TEXT_COLOR", "ImageWriter", "cell_box", "render"]

BACKGROUND: tuple[int, int, int] = (225, 225, 225)
TEXT_COLOR: tuple[int, int, int] = (20, 20, 20)
_RADIUS = {"small": 0.24, "large": 0.42}  # fraction of a cell's side


def cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` of a grid cell (the grounding crops)."""
    row, col = divmod(cell, 3)
    return round(col * size / 3), round(row * size / 3), round((col + 1) * size / 3), round((row + 1) * size / 3)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, size: int) -> None:
    x0, y0, x1, y1 = cell_box(o.cell, size)
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    r = _RADIUS[o.size] * size / 3
    color = COLORS[o.color]
    if o.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif o.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=color)
    elif o.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)], fill=color)
    elif o.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=color)
    elif o.shape == "star":
        draw.polygon(_star(cx, cy, r), fill=color)
    else:  # cross
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)


_FONT: Any = None
_WORD_MASKS: dict[tuple[str, int], Image.Image] = {}


def _font() -> Any:
    """PIL's built-in bitmap font (no FreeType: the same pixels on every machine)."""
    global _FONT
    if _FONT is None:
        loader = getattr(ImageFont, "load_default_imagefont", None)
        _FONT = loader() if loader is not None else ImageFont.load_default()
    return _FONT


def _word_mask(word: str, size: int) -> Image.Image:
    """The word drawn small with the bitmap font, then enlarged (nearest) to be readable: at most 90% of the image
    width and 80% of a row's height (the same scale for every word of ``WORDS``)."""
    key = (word, size)
    if key not in _WORD_MASKS:
        font = _font()
        boxes = [font.getbbox(w) for w in WORDS]
        width, height = max(b[2] - b[0] for b in boxes), max(b[3] - b[1] for b in boxes)
        scale = max(1, min(int(0.9 * size / width), int(0.8 * size / 3 / height)))
        left, top, right, bottom = font.getbbox(word)
        mask = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(mask).text((-left, -top), word, fill=255, font=font)
        _WORD_MASKS[key] = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
    return _WORD_MASKS[key]


def render(scene: Scene, size: int = 128, *, rng: np.random.Generator | None = None, noise: int = 6) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` px. With ``rng``, mild background noise is added (uniform
    integers in [-noise, noise], in blocks of ``size // 32`` px, the same on all three channels); without, the
    rendering is clean (what an analysis-by-synthesis reader compares against)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        _draw_object(draw, o, size)
    if scene.word is not None:
        mask = _word_mask(scene.word, size)
        _, y0, _, y1 = cell_box(3 * scene.word_row, size)
        x, y = (size - mask.width) // 2, (y0 + y1 - mask.height) // 2
        image.paste(TEXT_COLOR, (x, y, x + mask.width, y + mask.height), mask)
    if rng is not None and noise > 0:
        block = max(1, size // 32)
        cells = -(-size // block)
        grain = rng.integers(-noise, noise + 1, size=(cells, cells, 1), dtype=np.int16)
        grain = grain.repeat(block, axis=0).repeat(block, axis=1)[:size, :size]
        pixels = np.asarray(image, dtype=np.int16) + grain
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


class ImageWriter:
    """Writes every image once (PNG, fixed settings) under ``out/images/<folder>/NNNNNN.png``, and remembers the
    scene each full image shows (crops have none)."""

    def __init__(self, out: Path, size: int, noise: int) -> None:
        self.out, self.size, self.noise = out, size, noise
        self.counters: dict[str, int] = {}
        self.digest = hashlib.sha256()
        self.count = 0
        self.scenes: dict[str, Scene] = {}

    def caption(self, rel: str) -> str | None:
        """The exact caption of the scene an image shows; None for no image (``""``)."""
        if not rel:
            return None
        if rel not in self.scenes:
            raise ValueError(f"{rel} is not the rendering of a whole scene (a crop?): it has no scene caption")
        return caption(self.scenes[rel])

    def save_image(self, image: Image.Image, folder: str, scene: Scene | None = None) -> str:
        """Save ``image`` as the next PNG of ``folder`` and return its path relative to the output root."""
        n = self.counters.get(folder, 0)
        if n == 0:
            (self.out / "images" / folder).mkdir(parents=True, exist_ok=True)
        self.counters[folder] = n + 1
        rel = f"images/{folder}/{n:06d}.png"
        image.save(self.out / rel, format="PNG", compress_level=6)
        self.digest.update(rel.encode() + b"\0" + image.tobytes())
        self.count += 1
        if scene is not None:
            self.scenes[rel] = scene
        return rel

    def save(self, scene: Scene, rng: np.random.Generator, folder: str) -> str:
        """Render ``scene`` (noise drawn from ``rng``) and save it; return its relative path."""
        return self.save_image(render(scene, self.size, rng=rng, noise=self.noise), folder, scene)
