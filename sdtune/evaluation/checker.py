"""An independent checker: names a toy-world image's shape, colour, background and style by rules on its pixels.

The judge (`sdtune.evaluation.judge`) is a CNN that learned the toy world from its renderer. This checker was
written from the toy world's *specification* only (the palette, the background colours, how each style is
drawn), the way a person reads a spec, with no learned weights and none of the judge's code or data. Where the
two agree on an image, the answer does not rest on one model's quirks; where they disagree, one of them is wrong
and a person can look.

    check(image) -> {"shape": "star", "colour": "pink", "background": "gray", "style": "dotted"}

The rules, in order:

1. background, from the pixels of a 3-pixel border: plain white, black or gray (one colour), checkerboard (two
   greys, 0.45 and 0.86), gradient (top to bottom, blue (0.25, 0.55, 0.95) to sand (0.98, 0.85, 0.55));
2. foreground: the pixels far from the background (Otsu's threshold on that distance), the largest blob; with the
   gaps between its stripes or dots closed and its holes filled, the object's silhouette;
3. colour: the median colour of the clearly-foreground pixels divided by its brightest channel (a shaded, darker
   part keeps its colour), the nearest palette colour;
4. shape: the silhouette's arms, the points of its outline that stand out from the centre: none for a circle,
   3 for a triangle, 4 for a square (along the diagonals), a diamond or a cross (along the axes; a cross has wide,
   flat-ended arms and deep notches), 5 for a star;
5. style: the coverage inside the silhouette compared with each style's pattern at every placement (flat: all;
   outlined: a 4-pixel band; striped: diagonal stripes 16 pixels apart; dotted: a dot per 8 x 8 cell; the last
   two with a 2-pixel rim), then flat vs shaded by how much darker the far side is than the lit top left.

A rule that cannot decide answers "unsure": no foreground, a background like none of the five, a colour far from
every palette colour or midway between two, an outline with more than 5 arms, a texture like no style.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..data.toyworld import BACKGROUNDS_RGB, COLOURS_RGB

UNSURE = "unsure"
BORDER = 3  # pixels of the image's edge read as background

# the specification's backgrounds
PLAIN = {name: np.array(rgb) / 255 for name, rgb in BACKGROUNDS_RGB.items()}
CHECKER_GREYS = (0.45, 0.86)
GRADIENT_TOP, GRADIENT_BOTTOM = np.array([0.25, 0.55, 0.95]), np.array([0.98, 0.85, 0.55])
# the palette, each colour divided by its brightest channel: shading scales a colour, this ratio stays
PALETTE = {name: np.array(rgb) / max(rgb) for name, rgb in COLOURS_RGB.items()}


def as_array(image) -> np.ndarray:
    """PIL image, (64, 64, 3) array in [0, 1] or (3, 64, 64) tensor in [0, 1] -> float (H, W, 3) array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    x = np.asarray(image, dtype=np.float64)
    return x.transpose(1, 2, 0) if x.shape[0] == 3 and x.shape[-1] != 3 else x


# ------------------------------------------------------------------------------------------------
# 1. Background
# ------------------------------------------------------------------------------------------------

def border_mask(h: int, w: int, width: int = BORDER) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.minimum(np.minimum(xs, w - 1 - xs), np.minimum(ys, h - 1 - ys)) < width


def gradient_at(h: int) -> np.ndarray:
    """The gradient background's colour per row, (h, 3): linear from top to bottom."""
    t = ((np.arange(h) + 0.5) / h)[:, None]
    return (1 - t) * GRADIENT_TOP + t * GRADIENT_BOTTOM


def background_model(x: np.ndarray) -> tuple[str, np.ndarray]:
    """Name the background and return its distance map: how far each pixel is from being background."""
    h, w, _ = x.shape
    border = border_mask(h, w)
    edge = x[border]
    errors = {name: np.median(np.abs(edge - rgb).max(1)) for name, rgb in PLAIN.items()}
    greys = np.abs(edge[..., None] - np.array(CHECKER_GREYS)).max(1)  # (pixels, 2): distance to each grey
    nearer = greys.argmin(1)
    both_present = min(np.mean(nearer == 0), np.mean(nearer == 1)) > 0.2
    errors["checkerboard"] = np.median(greys.min(1)) if both_present else np.inf
    ramp = np.broadcast_to(gradient_at(h)[:, None, :], x.shape)
    errors["gradient"] = np.median(np.abs(edge - ramp[border]).max(1))
    name = min(errors, key=errors.get)
    if errors[name] > 0.2:
        return UNSURE, np.linalg.norm(x - np.median(edge, 0), axis=-1)
    if name == "checkerboard":  # distance to the segment of greys between the two drawn (edges between cells blur)
        dark, light = (np.median(edge[nearer == i], 0) for i in (0, 1))
        t = np.clip(((x - dark) @ (light - dark)) / max(np.sum((light - dark) ** 2), 1e-6), 0, 1)
        return name, np.linalg.norm(x - (dark + t[..., None] * (light - dark)), axis=-1)
    if name == "gradient":
        rows = np.array([np.median(x[y][border[y]], 0) if border[y].any() else gradient_at(h)[y] for y in range(h)])
        return name, np.linalg.norm(x - rows[:, None, :], axis=-1)
    return name, np.linalg.norm(x - np.median(edge, 0), axis=-1)


# ------------------------------------------------------------------------------------------------
# 2. Foreground and silhouette
# ------------------------------------------------------------------------------------------------

def otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance w0 w1 (m0 - m1)^2."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _filter(mask: np.ndarray, size: int, grow: bool) -> np.ndarray:
    """Max (grow) or min filter of a mask; outside the image counts as background."""
    r = size // 2
    im = ImageOps.expand(Image.fromarray(mask.astype(np.uint8) * 255), border=r, fill=0)
    out = np.asarray(im.filter(ImageFilter.MaxFilter(size) if grow else ImageFilter.MinFilter(size))) > 127
    return out[r:-r, r:-r]


def dilate(mask: np.ndarray, size: int = 3) -> np.ndarray:
    return _filter(mask, size, grow=True)


def erode(mask: np.ndarray, size: int = 3) -> np.ndarray:
    return _filter(mask, size, grow=False)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask plus its holes: everything that the outside, grown step by step around the mask, never reaches."""
    h, w = mask.shape
    free = np.pad(~mask, 1, constant_values=True)
    outside = np.zeros_like(free)
    outside[0, :] = outside[-1, :] = outside[:, 0] = outside[:, -1] = True
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if np.array_equal(grown, outside):
            return ~outside[1:-1, 1:-1]
        outside = grown


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component: every pixel takes its neighbours' largest label until nothing changes."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    padded = np.zeros((h + 2, w + 2), int)
    while True:
        padded[1:-1, 1:-1] = labels
        grown = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(grown, padded[dy : dy + h, dx : dx + w], out=grown)
        grown *= mask
        if np.array_equal(grown, labels):
            break
        labels = grown
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax() if counts.max() else np.zeros_like(mask)


def depth(mask: np.ndarray) -> np.ndarray:
    """How many erosions each pixel of the mask survives (1 on the outline, growing inward), alternating a 3x3
    square and a plus-shaped neighbourhood: an octagon's distance, close to the Euclidean distance to the edge."""
    h, w = mask.shape
    d = np.zeros((h, w), int)
    padded = np.zeros((h + 2, w + 2), bool)
    step = 0
    while mask.any():
        d += mask
        padded[1:-1, 1:-1] = mask
        shifts = [(0, 1), (2, 1), (1, 0), (1, 2)] + ([(0, 0), (0, 2), (2, 0), (2, 2)] if step % 2 == 0 else [])
        for dy, dx in shifts:
            mask = mask & padded[dy : dy + h, dx : dx + w]
        step += 1
    return d


# ------------------------------------------------------------------------------------------------
# Features: numbers the rules read
# ------------------------------------------------------------------------------------------------

def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull's vertices in order."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return np.array(pts, float)

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    return np.array(half(pts)[:-1] + half(pts[::-1])[:-1], float)


def hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixels (pixel centres' hull H, grown by half a pixel all round:
    H + perimeter / 2 + pi / 4), comparable with the pixel count."""
    ys, xs = np.nonzero(mask & ~erode(mask))
    hull = convex_hull(np.stack([xs, ys], 1))
    if len(hull) < 3:
        return float(mask.sum())
    x, y = hull[:, 0], hull[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    perimeter = np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0])).sum()
    return area + perimeter / 2 + math.pi / 4


def radial_profile(mask: np.ndarray) -> np.ndarray:
    """The outline's distance from the centroid, going round in 5-degree steps, smoothed over 25 degrees."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    ey, ex = np.nonzero(mask & ~erode(mask))
    bins = (np.degrees(np.arctan2(ey - cy, ex - cx)) % 360 // 5).astype(int)
    profile = np.zeros(72)
    np.maximum.at(profile, bins, np.hypot(ey - cy, ex - cx) + 0.5)
    for i in np.nonzero(profile == 0)[0]:  # an empty bin takes its neighbours' mean
        profile[i] = (profile[i - 1] + profile[(i + 1) % 72]) / 2
    return np.convolve(np.concatenate([profile[-2:], profile, profile[:2]]), np.ones(5) / 5, mode="valid")


def arms(profile: np.ndarray, prominence: float = 0.1) -> list[int]:
    """The directions (profile bins) of the arms: peaks standing out of the profile by `prominence` of its maximum
    (a peak's prominence: its height above the higher of the lowest points on either side before a higher peak)."""
    n, found = len(profile), []
    for i in range(n):
        if profile[i] < max(profile[(i + j) % n] for j in range(-3, 4)):
            continue  # not the highest within 15 degrees
        if any(profile[(i + j) % n] == profile[i] for j in (-3, -2, -1)):
            continue  # a flat top: counted once, at its first bin
        lows = []
        for step in (1, -1):  # walk each way until a higher point, remembering the lowest
            low, j = profile[i], i
            for _ in range(n - 1):
                j = (j + step) % n
                if profile[j] > profile[i]:
                    break
                low = min(low, profile[j])
            lows.append(low)
        if profile[i] - max(lows) >= prominence * profile.max():
            found.append(i)
    return found


def tip_width(mask: np.ndarray, peaks: list[int], profile: np.ndarray) -> float:
    """How wide the arms are near their ends: the mask's width across each arm at 80% of its (smoothed) length, over
    that length, mean over arms. A cross's bars keep their width to the end; pointed arms narrow."""
    if not peaks:
        return 0.0
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    h, w = mask.shape
    widths = []
    for i in peaks:
        a, length = np.radians(5 * i + 2.5), profile[i]
        along, across = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        s = np.arange(-length, length, 0.5)  # points on the line across the arm, half a pixel apart
        px = np.round(cx + 0.8 * length * along[0] + s * across[0]).astype(int)
        py = np.round(cy + 0.8 * length * along[1] + s * across[1]).astype(int)
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        widths.append(0.5 * mask[py[ok], px[ok]].sum() / length)
    return float(np.mean(widths))


def features(image) -> dict:
    """Everything the rules read, from one image: see the module docstring."""
    x = as_array(image)
    background, distance = background_model(x)
    f = {"x": x, "background": background, "distance": distance}
    cut = max(otsu(distance), 0.12)
    blob = largest_blob(dilate(distance > cut, 3))  # the pieces of one striped or dotted object count as one
    foreground = (distance > cut) & blob
    f["foreground"] = foreground
    if foreground.sum() < 20:
        return f
    contrast = np.percentile(distance[foreground], 90)
    alpha = np.clip(distance / contrast, 0, 1) * blob  # 1 where the object's colour covers the pixel fully
    silhouette = fill_holes(erode(dilate(foreground, 5), 5))  # gaps between stripes or dots closed, holes filled
    silhouette &= largest_blob(silhouette)
    f.update(alpha=alpha, silhouette=silhouette, depth=depth(silhouette))
    area = silhouette.sum()
    f.update(area=int(area), solidity=area / hull_area(silhouette))  # a star's or a cross's notches: far below 1
    profile = radial_profile(silhouette)
    peaks = arms(profile)
    while 3 <= len(peaks) < 5:  # an arm too blunt to stand out leaves a gap wider than its neighbours'
        gaps = np.diff(peaks + [peaks[0] + 72])  # in 5-degree bins
        if 5 * gaps.max() <= 1.7 * 360 / (len(peaks) + 1):
            break
        k = int(gaps.argmax())
        peaks = sorted(peaks + [(peaks[k] + gaps[k] // 2) % 72])
    f.update(arms=len(peaks), roundness=profile.min() / profile.max(),  # a circle 1, a square 1/sqrt(2), a cross 1/2
             tips=tip_width(silhouette, peaks, profile),
             # 4 arms along the axes (a diamond, a cross) or the diagonals (a square): the mean of 4 x angle
             axial=float(np.cos(np.angle(np.exp(4j * np.radians(5 * np.array(peaks) + 2.5)).sum()))) if peaks else 0.0)
    return f


# ------------------------------------------------------------------------------------------------
# 3-5. The rules
# ------------------------------------------------------------------------------------------------

def colour_of(f: dict) -> str:
    x, distance, foreground = f["x"], f["distance"], f["foreground"]
    strong = foreground & (distance >= np.percentile(distance[foreground], 75))  # the least mixed with the background
    pixels = x[strong]
    pixels = pixels[pixels.max(1) > 0.12]  # too dark to have a colour
    if len(pixels) < 5:
        return UNSURE
    ratio = np.median(pixels / pixels.max(1, keepdims=True), 0)
    (name, d), (_, second) = sorted(((n, np.linalg.norm(ratio - p)) for n, p in PALETTE.items()), key=lambda t: t[1])[:2]
    return name if d < 0.35 and d < 0.7 * second else UNSURE  # far from every colour, or between two: unsure


def shape_of(f: dict) -> str:
    """A shape by its arms, the points that stick out of its outline: a circle has none, a triangle 3, a square,
    a diamond and a cross 4 (a square's along the diagonals, the others' along the axes; a cross's notches are
    deep), a star 5."""
    if f["area"] < 30:
        return UNSURE
    n = f["arms"]
    if f["roundness"] > 0.86 or (f["roundness"] > 0.8 and n != 4) or n <= 2:  # bumps on a round outline are not arms
        return "circle"
    if n == 3:
        return "triangle"
    if n == 5:
        return "star"
    if n == 4 and f["axial"] < 0:
        return "square"
    if n == 4:
        return "cross" if f["tips"] > 0.6 and f["solidity"] < 0.85 else "diamond"
    return UNSURE


# The specification's styles, as patterns of coverage inside the silhouette (depth: pixels below the outline)
STRIPE_PERIOD = 16  # along x (or y): stripes run along x + y = constant, half of each period covered
DOT_SPACING, DOT_RADIUS = 8, 2.2  # one dot per 8 x 8 cell
RIM, OUTLINE = 2, 4  # striped and dotted shapes keep a 2-pixel rim; an outline is a 4-pixel band
SOFT = 1.0  # the patterns are compared softened by this Gaussian (pixels): decoders do not draw sharp edges


@functools.cache
def _periodic(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Stripes and dots on an h x w grid, one map per phase of their period (every placement a pattern can take)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    stripes = [np.abs((xs + ys + p) / STRIPE_PERIOD % 1 - 0.5) < 0.25 for p in range(STRIPE_PERIOD)]
    dots = [np.hypot((xs + px) % DOT_SPACING - DOT_SPACING / 2, (ys + py) % DOT_SPACING - DOT_SPACING / 2) < DOT_RADIUS
            for py in range(DOT_SPACING) for px in range(DOT_SPACING)]
    return np.stack(stripes), np.stack(dots)


def style_patterns(d: np.ndarray) -> dict[str, np.ndarray]:
    """Each style's coverage pattern inside a silhouette of depth map `d`, one per phase of its period: (phases, H, W)."""
    inside, rim = d >= 1, (d >= 1) & (d <= RIM)
    stripes, dots = _periodic(*d.shape)
    return {"flat": inside[None], "outlined": (inside & (d <= OUTLINE))[None],
            "striped": rim | (inside & stripes), "dotted": rim | (inside & dots)}


def style_errors(f: dict) -> dict[str, float]:
    """Mean squared difference between the observed coverage and each style's best-placed pattern, in the silhouette
    (computed on the silhouette's bounding box, with a margin for the softening)."""
    ys, xs = np.nonzero(f["silhouette"])
    box = np.s_[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4]
    inside = f["silhouette"][box]
    alpha = f["alpha"][box][inside]
    errors = {}
    for style, patterns in style_patterns(f["depth"][box]).items():
        soft = soften(patterns.astype(float))[:, inside]  # (phases, pixels)
        errors[style] = float(np.min(np.mean((soft - alpha) ** 2, axis=1)))
    return errors


def soften(stack: np.ndarray, sigma: float = SOFT) -> np.ndarray:
    """Gaussian blur of a stack of (H, W) maps, separable, edges repeated."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = stack.shape[-2:]
    p = np.pad(stack, ((0, 0), (r, r), (0, 0)), mode="edge")
    stack = sum(wt * p[:, i : i + h] for i, wt in enumerate(k))
    p = np.pad(stack, ((0, 0), (0, 0), (r, r)), mode="edge")
    return sum(wt * p[:, :, i : i + w] for i, wt in enumerate(k))


def falloff(f: dict) -> float:
    """Shading: light from the top left. How much darker the object's far quarter (along x + y) is than its lit
    quarter, by their median brightness: about 0 for a flat object, about 1/2 for a shaded one."""
    covered = (f["depth"] >= 3) & (f["alpha"] > 0.5)  # inside, away from pixels mixed with the background
    if covered.sum() < 16:
        return 0.0
    ys, xs = np.nonzero(covered)
    value, t = f["x"].max(-1)[covered], xs + ys
    lit, far = value[t <= np.percentile(t, 25)], value[t >= np.percentile(t, 75)]
    return float(1 - np.median(far) / max(np.median(lit), 1e-6))


def style_of(f: dict) -> str:
    if f["silhouette"].sum() < 30:
        return UNSURE
    errors = style_errors(f)
    best = min(errors, key=errors.get)
    if errors[best] > 0.2:  # like none of the patterns
        return UNSURE
    if best == "flat":
        return "shaded" if falloff(f) > 0.12 else "flat"
    return best


def check(image) -> dict[str, str]:
    """Name the shape, colour, background and style of one 64x64 toy-world image (or "unsure")."""
    f = features(image)
    if "silhouette" not in f:
        return {"shape": UNSURE, "colour": UNSURE, "background": f["background"], "style": UNSURE}
    return {"shape": shape_of(f), "colour": colour_of(f), "background": f["background"], "style": style_of(f)}


def check_all(images) -> dict[str, list[str]]:
    """`check` on many images, in the judge's layout: {attribute: [label per image]}."""
    names: dict[str, list[str]] = {k: [] for k in ("shape", "colour", "background", "style")}
    for image in images:
        for k, v in check(image).items():
            names[k].append(v)
    return names
