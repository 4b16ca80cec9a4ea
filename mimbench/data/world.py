"""The synthetic world: scenes of coloured shapes with masks, labels and captions.

Every scene is a pure function of (seed, split, index). The class of an object is its shape
only: colour, size, position and texture are drawn independently of it, so low-level
statistics cannot give the class away.

difficulty 0: one object on a flat background (the default; what CPU budgets can learn).
difficulty 1: one or two objects, striped or dotted, on a noisy background.
difficulty 2: one to three occluding textured objects on a striped, noisy background.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mimbench.errors import DataError
from mimbench.weights import cache_dir

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "star", "hexagon")
COLOURS = {  # name -> RGB; a scene jitters them slightly so no exact value identifies a colour
    "red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (230, 220, 40),
    "green": (50, 180, 60), "cyan": (40, 200, 210), "blue": (40, 70, 220),
    "purple": (140, 50, 200), "pink": (240, 120, 190), "white": (235, 235, 235),
    "black": (25, 25, 25),
}
TEXTURES = ("plain", "striped", "dotted")
# disjoint draws. `val` is for choosing recipes; `test` (10,000 scenes) is for reporting what no
# search has seen: --set eval_data.val.split=test
SPLITS = {"teacher": 0, "pretrain": 1, "train": 2, "val": 3, "test": 4}
SPLIT_STRIDE = 10_000_000
DEFAULT_LENGTH = {"teacher": 20_000, "pretrain": 20_000, "train": 5_000, "val": 2_000, "test": 10_000}
RENDER_SCALE = 2  # draw large, then downsample: anti-aliased edges


@dataclass
class Scene:
    image: np.ndarray  # [S, S, 3] uint8
    mask: np.ndarray  # [S, S] uint8, 0 = background, k = SHAPES[k - 1]
    label: int  # class of the largest visible object, 0-based
    objects: list[dict]  # visible objects: shape, size, colour, texture, position words

    @property
    def caption(self) -> str:
        return describe(self.objects)


def describe(objects: list[dict], drop: float = 0.0, rng: np.random.Generator | None = None,
             name: float = 1.0) -> str:
    """'a small red striped triangle at the top left and a large blue ring'. With `drop`, each
    attribute other than the shape is left out with that probability (a caption augmentation
    that stops a CLIP teacher matching captions by colour and position alone). With `name` < 1
    each shape is named with that probability and is otherwise called 'object', as alt-text
    names an image's class only some of the time."""
    phrases = []
    for o in objects:
        keep = {k: drop == 0 or rng.random() >= drop for k in ("size", "colour", "texture", "where")}
        named = name >= 1 or rng.random() < name  # no draw at 1: the captions' stream is unchanged
        words = ["a"]
        words += [o["size"]] if keep["size"] else []
        words += [o["colour"]] if keep["colour"] else []
        words += [o["texture"]] if keep["texture"] and o["texture"] != "plain" else []
        words += [o["shape"] if named else "object"]
        words += [o["where"]] if keep["where"] else []
        phrases.append(" ".join(words))
    return " and ".join(phrases)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n, radius, phase=0.0):
        return [(cx + radius * math.cos(angle + phase + 2 * math.pi * k / n),
                 cy + radius * math.sin(angle + phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        return ring(4, r, math.pi / 4)
    if shape == "diamond":
        return [(cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle))
                for x, y in ((0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0))]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = 0.33 * r, r
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
               (-b, a), (-b, -a), (-a, -a)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, angle, fill) -> None:
    if shape in ("circle", "ring"):  # the ring's hole is cut by the caller
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _position_words(cx: float, cy: float, size: float) -> str:
    col = ("left", "center", "right")[min(2, int(3 * cx / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / size))]
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"at the {row} {col}"


class World:
    """Scenes of one split. Item i is (image, label), the image a uint8 [S, S, 3] array (read
    only when cached); `scene(i)` adds mask and caption."""

    def __init__(self, split: str = "pretrain", length: int | None = None, image_size: int = 64,
                 difficulty: int = 0, seed: int = 0, cache: bool = True,
                 labels: str = "class"):
        if split not in SPLITS:
            raise DataError(f"world split must be one of {', '.join(SPLITS)}, not {split!r}.")
        if difficulty not in (0, 1, 2):
            raise DataError(f"world difficulty must be 0, 1 or 2, not {difficulty!r}.")
        self.split, self.image_size, self.difficulty, self.seed = split, image_size, difficulty, seed
        self.length = DEFAULT_LENGTH[split] if length is None else length
        if not 0 < self.length <= SPLIT_STRIDE:
            raise DataError(f"world length must be between 1 and {SPLIT_STRIDE}, not {length}.")
        if labels not in ("class", "mask"):
            raise DataError(f"world labels must be 'class' or 'mask', not {labels!r}.")
        self.labels = labels
        self.classes = list(SHAPES)
        self._arrays = self._load_or_render() if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        """(image, class of the largest object) or, with labels='mask', (image, [S, S] map)."""
        if self._arrays is not None:
            images, masks, labels = self._arrays
            image, mask, label = images[i], masks[i], int(labels[i])
        else:
            scene = self.scene(i)
            image, mask, label = scene.image, scene.mask, scene.label
        return np.asarray(image), (np.array(mask) if self.labels == "mask" else label)

    @property
    def num_classes(self) -> int:
        return len(SHAPES) + 1 if self.labels == "mask" else len(SHAPES)

    @property
    def background_class(self) -> int | None:
        """The label of the background in masks (shapes are 1..8); None for class labels."""
        return 0 if self.labels == "mask" else None

    def _load_or_render(self):
        """Images, masks and labels as uint8 arrays, rendered once into the cache directory."""
        key = f"v1-s{self.seed}-{self.split}-n{self.length}-px{self.image_size}-d{self.difficulty}"
        folder = cache_dir() / "world" / key
        if not (folder / "labels.npy").exists():
            log.info("rendering %d world scenes into %s", self.length, folder)
            images = np.empty((self.length, self.image_size, self.image_size, 3), np.uint8)
            masks = np.empty((self.length, self.image_size, self.image_size), np.uint8)
            labels = np.empty(self.length, np.int64)
            for i in range(self.length):
                scene = self.scene(i)
                images[i], masks[i], labels[i] = scene.image, scene.mask, scene.label
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".render-"))
            for name, array in (("images", images), ("masks", masks), ("labels", labels)):
                np.save(tmp / f"{name}.npy", array)
            try:
                tmp.rename(folder)  # atomic; another process may have won the race
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return tuple(np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("images", "masks", "labels"))

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
        big = self.image_size * RENDER_SCALE
        image = Image.fromarray(self._background(rng, big))
        labels = Image.new("L", (big, big), 0)
        count = 1 if self.difficulty == 0 else int(rng.integers(1, self.difficulty + 2))
        objects = []
        for _ in range(count):
            objects.append(self._draw_object(rng, image, labels, big))
        image = image.resize((self.image_size,) * 2, Image.BOX)
        mask = np.asarray(labels.resize((self.image_size,) * 2, Image.NEAREST))
        areas = np.bincount(mask.ravel(), minlength=len(SHAPES) + 1)[1:]
        visible = [o for o in objects if areas[o["cls"]] > 0] or objects
        largest = max(visible, key=lambda o: areas[o["cls"]])
        return Scene(np.asarray(image), mask, largest["cls"], [o["words"] for o in visible])

    def _background(self, rng: np.random.Generator, big: int) -> np.ndarray:
        base = rng.integers(40, 216, size=3)
        img = np.broadcast_to(base, (big, big, 3)).astype(np.float32)
        if self.difficulty >= 1:
            img = img + rng.normal(0, 12, size=(big, big, 1))
        if self.difficulty >= 2:
            period = rng.uniform(6, 14) * RENDER_SCALE
            theta = rng.uniform(0, math.pi)
            yy, xx = np.mgrid[0:big, 0:big]
            stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
            img = img + 25 * stripes[..., None] * rng.uniform(-1, 1, size=3)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_object(self, rng: np.random.Generator, image: Image.Image, labels: Image.Image,
                     big: int) -> dict:
        cls = int(rng.integers(len(SHAPES)))
        shape = SHAPES[cls]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        rgb = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
        scale = rng.uniform(0.18, 0.42)
        r = scale * big
        cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
        angle = rng.uniform(0, 2 * math.pi)
        texture = "plain" if self.difficulty == 0 else TEXTURES[int(rng.integers(len(TEXTURES)))]

        shape_mask = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(shape_mask), shape, cx, cy, r, angle, 255)
        if shape == "ring":  # cut the hole
            ImageDraw.Draw(shape_mask).ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r,
                                                cy + 0.55 * r], fill=0)
        layer = Image.new("RGB", (big, big), rgb)
        if texture != "plain":
            layer = Image.fromarray(self._texture(np.asarray(layer), texture, rng, big))
        image.paste(layer, (0, 0), shape_mask)
        labels.paste(cls + 1, None, shape_mask)
        size_word = "small" if scale < 0.26 else ("large" if scale > 0.34 else "medium")
        words = {"shape": shape, "size": size_word, "colour": colour, "texture": texture,
                 "where": _position_words(cx, cy, big)}
        return {"cls": cls, "words": words}

    @staticmethod
    def _texture(layer: np.ndarray, texture: str, rng: np.random.Generator, big: int) -> np.ndarray:
        yy, xx = np.mgrid[0:big, 0:big]
        period = rng.uniform(4, 8) * RENDER_SCALE
        if texture == "striped":
            theta = rng.uniform(0, math.pi)
            on = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period) > 0
        else:  # dotted
            on = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 4) ** 2
        shade = np.where(on[..., None], 0.55, 1.0)
        return (layer * shade).astype(np.uint8)
