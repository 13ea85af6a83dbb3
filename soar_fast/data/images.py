"""Finding and decoding the image of a record: `<image_dir>/<md5>.jpg`, else `.png`, else `.webp`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".png", ".webp")


def find_image(image_dir: Path, md5: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        path = image_dir / f"{md5}{ext}"
        if path.is_file():
            return path
    return None


def load_rgb(path: Path) -> Image.Image:
    """Fully decoded RGB image. Truncated or undecodable files raise (never padded or replaced)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def image_problem(image_dir: Path, md5: str) -> tuple[Path | None, str | None]:
    """(path, None) for a readable image; (path or None, reason) otherwise."""
    path = find_image(image_dir, md5)
    if path is None:
        folders = [image_dir / f"{md5}{ext}" for ext in IMAGE_EXTENSIONS if (image_dir / f"{md5}{ext}").is_dir()]
        if folders:
            return folders[0], f"{folders[0]} is a directory, not an image file"
        tried = ", ".join(f"{md5}{ext}" for ext in IMAGE_EXTENSIONS)
        return None, f"image not found in {image_dir} (tried {tried})"
    try:
        load_rgb(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return path, f"unreadable image {path}: {exc}"
    return path, None
