"""Shared pieces of the reproductions: command-line options, pictures with labels, markdown reports."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image, ImageDraw

from ldam.device import CHOICES as DEVICE_CHOICES, model_device, resolve_device
from ldam.errors import LdamError

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "repro"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="reduced mode (a few steps, few chains): checks that the script runs, numbers mean nothing")
    p.add_argument("--out", type=Path, default=DOCS, help="where the report and pictures go (default: docs/repro)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", metavar="{" + ",".join(DEVICE_CHOICES) + "}",
                   help="where the models run: auto takes a GPU when there is one (cuda, then mps), else the CPU "
                   "(default: %(default)s); results, numbers and pictures are computed from CPU copies")
    return p


def setup(args: argparse.Namespace) -> None:
    """Threads, the output folder, and ``args.device`` resolved to a ``torch.device`` (a device this
    machine lacks ends the script with one line: ``error: ...``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.device = resolve_device(args.device)
    except LdamError as e:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {e}")
    args.out.mkdir(parents=True, exist_ok=True)


def on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model moved to ``device`` (zoo models and checkpoints load on the CPU), in eval mode."""
    return model.to(device).eval()


@torch.no_grad()
def infer(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` on the model's device, without gradients; the output comes back on the CPU."""
    return model(x.to(model_device(model))).cpu()


def labeled(im: Image.Image, text: str, width: int = 170) -> Image.Image:
    """``im`` with ``text`` in a white margin on its left."""
    mode = "RGB" if im.mode == "RGB" else "L"
    white = (255, 255, 255) if mode == "RGB" else 255
    out = Image.new(mode, (im.width + width, im.height), white)
    out.paste(im.convert(mode), (width, 0))
    draw = ImageDraw.Draw(out)
    lines = text.split("\n")
    y = im.height // 2 - 6 * len(lines)
    for line in lines:
        draw.text((4, y), line, fill=(0, 0, 0) if mode == "RGB" else 0)
        y += 12
    return out


def header(labels: Sequence[str], tile: int, pad: int = 2, left: int = 170, mode: str = "L") -> Image.Image:
    """A strip of column labels over tiles of width ``tile`` (as laid out by ``ldam.render.grid``)."""
    white = (255, 255, 255) if mode == "RGB" else 255
    out = Image.new(mode, (left + pad + len(labels) * (tile + pad), 14), white)
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        draw.text((left + pad + i * (tile + pad), 1), text[: max(1, tile // 6)], fill=(0, 0, 0) if mode == "RGB" else 0)
    return out


def stack(rows: Iterable[Image.Image]) -> Image.Image:
    rows = list(rows)
    mode = "RGB" if any(r.mode == "RGB" for r in rows) else "L"
    white = (255, 255, 255) if mode == "RGB" else 255
    out = Image.new(mode, (max(r.width for r in rows), sum(r.height for r in rows)), white)
    y = 0
    for r in rows:
        out.paste(r.convert(mode), (0, y))
        y += r.height
    return out


def fmt(mean: float, err: float | None = None, digits: int = 3) -> str:
    if err is None or err != err:  # nan
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {err:.{digits}f}"


class Report:
    """A markdown report: sections of text, tables and pictures (paths relative to the report)."""

    def __init__(self, path: Path, title: str, quick: bool):
        self.path = path
        self.lines = [f"# {title}", ""]
        cmd = " ".join(["python", f"experiments/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        self.lines += [f"Made by `{cmd}` on {platform.machine()}, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads.", ""]
        if quick:
            self.lines += ["**Reduced mode (`--quick`): too few steps for the numbers to mean anything.**", ""]

    def text(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.lines += [p, ""]

    def table(self, head: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self.lines.append("| " + " | ".join(head) + " |")
        self.lines.append("|" + "---|" * len(head))
        for r in rows:
            self.lines.append("| " + " | ".join(str(c) for c in r) + " |")
        self.lines.append("")

    def image(self, im: Image.Image, name: str, caption: str) -> Path:
        path = self.path.parent / name
        im.save(path)
        self.lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return path

    def write(self) -> Path:
        self.lines += [f"Wall time: {time.perf_counter() - T0:.0f} s.", ""]
        self.path.write_text("\n".join(self.lines))
        print(f"wrote {self.path}")
        return self.path


def data_available(*names: str) -> bool:
    """Whether ``$LDAM_DATA_DIR`` or the cache holds the named dataset folders."""
    roots = [Path(os.environ["LDAM_DATA_DIR"])] if os.environ.get("LDAM_DATA_DIR") else []
    roots.append(Path(os.environ.get("LDAM_CACHE_DIR") or Path.home() / ".cache" / "ldam"))
    return all(any((r / n).exists() for r in roots) for n in names)
