"""Tiny images written with PIL for the image-encoder tests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 64) -> bytes:
    """A distinct small picture per seed: a colour gradient plus a seeded block pattern."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.add.outer(base, base) / 2, np.tile(base, (size, 1)), np.full((size, size), 40.0)], -1)
    blocks = rng.integers(0, 255, (8, 8, 3)).repeat(size // 8, 0).repeat(size // 8, 1)
    pixels = (0.5 * pixels + 0.5 * blocks).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def picture():
    return image_bytes
