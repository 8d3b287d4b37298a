"""Pure planning: chunk boundaries, output sizes, the part split, class ids.

Every function here is a function of its arguments only (no files, no clocks),
so tests check them by invariants: chunks cover the source with no gap and no
overlap, sizes are even with the short side exact, the parts of a split are
disjoint and cover every input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from fractions import Fraction

# Chunk boundaries are rounded to this step (seconds), so they print and compare exactly.
_EPS = 1e-6


def chunk_bounds(duration_s: float, chunk_s: float, min_chunk_s: float) -> list[tuple[float, float]]:
    """Cut ``[0, duration_s)`` into chunks of ``chunk_s`` seconds.

    The last short piece is its own chunk when it lasts at least ``min_chunk_s``;
    otherwise it is added to the chunk before it, so the chunks always cover the
    whole source, back to back. A source shorter than ``min_chunk_s`` is still
    one chunk (every playable video yields a sample).
    """
    if duration_s <= 0:
        return []
    if chunk_s <= 0:
        raise ValueError(f"chunk_s must be > 0, got {chunk_s}")
    n_full = max(1, math.floor(duration_s / chunk_s + _EPS))
    starts = [i * chunk_s for i in range(n_full)]
    rest = duration_s - n_full * chunk_s
    if rest > _EPS and rest >= min_chunk_s - _EPS:
        starts.append(n_full * chunk_s)
    ends = starts[1:] + [duration_s]
    return [(round(a, 6), round(b, 6)) for a, b in zip(starts, ends, strict=True)]


def kept_cuts(duration_s: float, cuts: Iterable[float], min_shot_s: float = 0.0) -> list[float]:
    """The cuts inside ``(0, duration_s)``, sorted, dropping one that comes less than ``min_shot_s``
    after the start or the last kept cut (a flash or a strobe is not a new shot)."""
    kept: list[float] = []
    for c in sorted({round(c, 6) for c in cuts}):
        if _EPS < c < duration_s - _EPS and c - (kept[-1] if kept else 0.0) >= min_shot_s - _EPS:
            kept.append(c)
    return kept


def scene_bounds(duration_s: float, cuts: Iterable[float], chunk_s: float, min_chunk_s: float,
                 min_shot_s: float = 0.0) -> list[tuple[float, float, bool]]:
    """Chunks ``(start, end, starts_at_cut)`` that never span a kept shot cut (:func:`kept_cuts`).

    Each shot (from a cut to the next) is cut by :func:`chunk_bounds`, so every cut is a
    chunk boundary and every other boundary is one the length rule needs. A shot shorter
    than ``min_chunk_s`` stays its own chunk: joining it to a neighbour would span a cut.
    """
    if duration_s <= 0:
        return []
    inner = kept_cuts(duration_s, cuts, min_shot_s)
    edges = [0.0, *inner, round(duration_s, 6)]
    out = []
    for shot, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        pieces = chunk_bounds(b - a, chunk_s, min_chunk_s)
        for i, (s, e) in enumerate(pieces):
            end = b if i == len(pieces) - 1 else round(a + e, 6)
            out.append((round(a + s, 6), end, shot > 0 and i == 0))
    return out


def split_points(bounds: list[tuple[float, float]], overrun_s: float | None = None) -> tuple[float, ...]:
    """Where the encoder must cut: every chunk start but the first.

    With ``overrun_s`` (the chunk length) the cuts go on past the planned end, as many again
    (at least 10), in case the source is longer than its header says: the extra time then
    becomes chunks instead of one long last chunk. A cut past the real end does nothing.
    """
    cuts = [start for start, _ in bounds[1:]]
    if overrun_s and bounds:
        end = bounds[-1][1]
        cuts += [round(end + k * overrun_s, 6) for k in range(1, max(10, len(bounds)) + 1)]
    return tuple(cuts)


def frame_rate(fps: float) -> Fraction:
    """``fps`` as the exact rate it stands for: 29.97 -> 30000/1001, 25.0 -> 25 (a denominator of at
    most 1001, as video rates are)."""
    return Fraction(fps).limit_denominator(1001)


def output_size(width: int, height: int, sar: Fraction | float, rotation: int,
                short_side: int) -> tuple[int, int]:
    """Output ``(width, height)`` in square pixels: short side ``short_side``, the
    display aspect ratio kept (pixel aspect and rotation applied), both even.

    The same rule as the ffmpeg scale filter in ``ffmpeg.scale_filter``.
    """
    dar = Fraction(width) * Fraction(sar) / Fraction(height)
    if rotation % 180 == 90:
        dar = 1 / dar
    s = short_side
    if dar >= 1:
        return 2 * _round_half_away(s * dar / 2), s
    return s, 2 * _round_half_away(s / dar / 2)


def _round_half_away(x: Fraction) -> int:
    """ffmpeg's ``round()``: half away from zero (Python's ``round`` is half-to-even)."""
    return int(math.floor(x + Fraction(1, 2)))


_PART_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_part(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: part 2 of 4, counted from 1."""
    m = _PART_RE.match(text)
    if not m:
        raise ValueError(f"--part {text!r}: expected I/N, e.g. 2/4 (part 2 of 4)")
    i, n = int(m[1]), int(m[2])
    if not 1 <= i <= n:
        raise ValueError(f"--part {text!r}: I must be between 1 and N")
    return i, n


def part_of(vid: str, parts: int) -> int:
    """The part (1..``parts``) an input belongs to. It depends on the input's id
    only, so adding inputs never moves old ones to another part."""
    return int(vid, 16) % parts + 1


def part_prefix(prefix: str, part: tuple[int, int] | None) -> str:
    """Shard-name prefix of a part run: ``train-p02of04``; ``prefix`` itself otherwise."""
    if part is None:
        return prefix
    i, n = part
    width = max(2, len(str(n)))
    return f"{prefix}-p{i:0{width}d}of{n:0{width}d}"


def class_list(names: Iterable[str | None], known: list[str] | None = None) -> list[str] | None:
    """Label names, index = label id. Known classes keep their ids and new ones
    are appended, so an incremental run never renumbers old samples. Names that
    are all integers are used as the ids themselves (``"0".."399"``)."""
    new = {n for n in names if n is not None}
    if not new and not known:
        return None
    known = list(known or [])
    fresh = new - set(known)
    if not fresh:
        return known
    if all(n.isdigit() for n in new | set(known)):
        top = max(int(n) for n in new | set(known))
        return [str(i) for i in range(top + 1)]
    return known + sorted(fresh)
