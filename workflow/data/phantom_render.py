"""Rendering of one chest X-ray phantom: anatomy, pose and findings to an image and its mask.

Phantom model. Each image is an attenuation map built from smooth analytic shapes in *anatomical*
coordinates (``u`` left-right, ``v`` top-bottom, both about [-1, 1]): a boxy body with a neck, two lung
fields (narrow apex, wide base, cut by domed hemidiaphragms), the heart (to the image right) merging with
the mediastinum, aortic knob and air-filled trachea, the spine with vertebral bands, curved posterior
ribs, clavicles, and vessels (lung markings) fanning out of each hilum. A study's pose (small shift,
rotation, scale) transforms the pixel grid, so image and mask move together; exposure and contrast vary
per study and per acquisition site, and the site sets the noise level.

Findings (CheXpert names) have a localised, visible effect: Cardiomegaly widens the heart; Pleural
Effusion is a basal opacity whose meniscus rises laterally (one or both sides); Pneumothorax turns the
outer half of one lung, apex to mid-lung, into dark air without markings around the collapsed lung, bounded
by a thin pleural line; Lung Opacity is a soft patch and Consolidation a dense lobulated one; Support
Devices is a bright curve (endotracheal tube or central line). Each is sized and contrasted to stay visible
at 64 px and through the demo's tiny VAE (docs/benchmarks.md). :func:`render` is pure: the same inputs give
the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

MASK_CLASSES = {"background": 0, "lungs": 1, "heart": 2, "devices": 3}


@dataclass(frozen=True)
class Anatomy:
    """A patient's fixed anatomy in anatomical units (see :data:`workflow.data.phantoms.ANATOMY_PRIOR`).

    ``dome_left``/``dome_right`` are the tops of the image-left/right hemidiaphragms, ``bone`` the bone
    density (falls with age), ``vessels`` segments ``(x0, y0, x1, y1, amplitude)`` fanning from the hila.
    """

    body_width: float
    lung_x: float
    lung_y: float
    lung_width: float
    lung_height: float
    dome_left: float
    dome_right: float
    heart_x: float
    heart_y: float
    heart_width: float
    heart_height: float
    rib_start: float
    rib_step: float
    bone: float
    vessels: tuple[tuple[float, float, float, float, float], ...]


@dataclass(frozen=True)
class Pose:
    """A study's geometry and exposure: shift, rotation (radians), scale, exposure offset, contrast."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    rotation: float = 0.0
    scale: float = 1.0
    exposure: float = 0.0
    contrast: float = 1.0


@dataclass(frozen=True)
class Findings:
    """Rendered findings (``present``) and the geometry of every finding, present or not.

    Sides are -1 (image left, the patient's right) or +1. All geometry is drawn for every study, so a
    counterfactual only toggles ``present``.
    """

    present: frozenset[str]
    effusion_sides: tuple[int, ...]
    effusion_level: float
    pneumothorax_side: int
    pneumothorax_depth: float
    consolidation: tuple[float, float, float, float]  # x, y, radius, lobe phase
    opacity: tuple[float, float, float]  # x, y, radius
    device: tuple[float, float, float, float, float, float]  # quadratic Bezier control points


def _ramp(d: np.ndarray, eps: float) -> np.ndarray:
    """Anti-aliased step: 0 for d < -eps, 1 for d > eps, linear between."""
    return np.clip(0.5 + 0.5 * d / eps, 0.0, 1.0)


def _radius(u: np.ndarray, v: np.ndarray, cx: float, cy: float, ax: Any, ay: float) -> np.ndarray:
    """Normalised elliptic radius (1 on the outline)."""
    return np.hypot((u - cx) / ax, (v - cy) / ay)


def _curves(points: np.ndarray, weight: np.ndarray, pose: Pose, size: int, sigma: float) -> np.ndarray:
    """Blurred raster of curves sampled densely as ``points`` (K, N, 2) in anatomical units.

    A curve of weight w peaks at about w; ``sigma`` is the blur in pixels.
    """
    cos, sin = math.cos(pose.rotation), math.sin(pose.rotation)
    u, v = points[..., 0], points[..., 1]
    col = (pose.scale * (cos * u - sin * v) + pose.shift_x + 1) / 2 * size - 0.5
    row = (pose.scale * (sin * u + cos * v) + pose.shift_y + 1) / 2 * size - 0.5
    step = np.linalg.norm(np.gradient(points, axis=1), axis=-1) * pose.scale * size / 2
    col, row = np.round(col).astype(int), np.round(row).astype(int)
    keep = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    canvas = np.zeros((size, size))
    np.add.at(canvas, (row[keep], col[keep]), (weight * step)[keep])
    return ndimage.gaussian_filter(canvas, sigma) * math.sqrt(2 * math.pi) * sigma


def render(
    anatomy: Anatomy, pose: Pose, findings: Findings, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frontal phantom radiograph; pure (no randomness).

    Args:
        anatomy: the patient's anatomy.
        pose: the study's pose and exposure.
        findings: rendered findings and their geometry.
        noise: additive noise field (intensity units); its square shape (H, H) sets the image size.

    Returns:
        ``(image, mask)``: uint8 HxH grayscale image and uint8 HxH mask (:data:`MASK_CLASSES`).
    """
    size, a, has = noise.shape[0], anatomy, findings.present
    eps = 1.2 / size
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c - pose.shift_y, c - pose.shift_x, indexing="ij")
    cos, sin = math.cos(pose.rotation), math.sin(pose.rotation)
    u, v = (cos * x + sin * y) / pose.scale, (-sin * x + cos * y) / pose.scale
    au = np.abs(u)

    body = _ramp(1 - (np.abs(u / a.body_width) ** 2.6 + np.abs((v - 0.25) / 1.2) ** 2.6), 4 * eps)
    body = np.maximum(body, _ramp(0.2 - au, eps) * _ramp(-0.6 - v, eps))
    lungs, rim, line = np.zeros_like(u), np.zeros_like(u), np.zeros_like(u)
    for side, dome_top in ((-1, a.dome_left), (1, a.dome_right)):
        cx = side * a.lung_x
        width = a.lung_width * (1 + 0.25 * (v - a.lung_y) / a.lung_height)
        rho = _radius(u, v, cx, a.lung_y, width, a.lung_height)
        dome = dome_top + 0.14 * ((u - cx) / a.lung_width) ** 2
        lung = _ramp((1 - rho) * a.lung_width, eps) * _ramp(dome - v, eps)
        lungs += lung
        if "Pneumothorax" in has and side == findings.pneumothorax_side:
            edge, upper = 1 - findings.pneumothorax_depth, _ramp(a.lung_y + 0.3 - v, 0.1)
            rim = lung * _ramp(rho - edge, eps) * upper
            line = np.exp(-(((rho - edge) * a.lung_width / (1.5 * eps)) ** 2)) * upper * lung
    big = "Cardiomegaly" in has
    heart_rho = _radius(
        u, v, a.heart_x + 0.07 * big, a.heart_y, a.heart_width * (1 + 0.45 * big), a.heart_height
    )
    heart = _ramp((1 - heart_rho) * a.heart_height, eps) * _ramp(
        min(a.dome_left, a.dome_right) + 0.08 - v, eps
    )
    medi = _ramp(0.1 + 0.04 * (v > -0.35) - np.abs(u - 0.02), eps) * _ramp(a.heart_y - v, eps)
    medi = np.maximum(medi, _ramp((1 - _radius(u, v, 0.1, -0.32, 0.08, 0.07)) * 0.07, eps))
    lungs *= (1 - heart) * (1 - medi)
    spine = _ramp(0.065 - au, eps) * (0.7 + 0.3 * np.cos(v * 2 * math.pi / 0.14) ** 2)
    trachea = _ramp(0.032 - au, eps) * _ramp(-0.3 - v, eps)
    rib_pos = (v - a.rib_start + 0.08 * au - 0.5 * u**2) / a.rib_step  # rib k runs along rib_pos == k
    ribs = np.exp(-(((rib_pos - np.clip(np.round(rib_pos), 0, 9)) * a.rib_step / 0.028) ** 2))
    ribs *= _ramp(0.72 - au, 0.05) * _ramp(au - 0.05, eps) * _ramp(max(a.dome_left, a.dome_right) - v, 0.05)
    clavicle = (au - 0.06) / 0.56  # position along the clavicle, 0 medial to 1 lateral
    clavicle_v = -0.72 - 0.12 * np.clip(clavicle, 0, 1)
    ribs = np.maximum(
        ribs, _ramp(0.028 - np.abs(v - clavicle_v), eps) * _ramp(0.5 - np.abs(clavicle - 0.5), eps)
    )
    t = np.linspace(0.0, 1.0, size)[None, :, None]
    ends = np.asarray(a.vessels)
    vessels = _curves(
        ends[:, None, :2] * (1 - t) + ends[:, None, 2:4] * t,
        ends[:, 4:5] * (1 - 0.6 * t[..., 0]),
        pose,
        size,
        max(0.6, 0.0065 * size),
    )

    att = 0.05 + 0.45 * body - 0.3 * lungs + 0.28 * np.maximum(medi, heart) + 0.1 * a.bone * spine
    att += 0.1 * a.bone * ribs * body - 0.22 * trachea + vessels * lungs * (1 - rim) - 0.2 * rim + 0.15 * line
    if "Pleural Effusion" in has:
        for side in findings.effusion_sides:
            lateral = np.clip((side * u - a.lung_x + a.lung_width) / (2 * a.lung_width), 0, 1)
            fluid_top = findings.effusion_level - 0.18 * lateral**2  # the meniscus rises laterally
            att += 0.3 * lungs * _ramp(side * u, eps) * _ramp(v - fluid_top, 0.03)
    if "Consolidation" in has:
        cx, cy, r, phase = findings.consolidation
        lobes = 1 + 0.2 * np.cos(3 * np.arctan2(v - cy, u - cx) + phase)
        att += 0.36 * lungs * _ramp((1 - _radius(u, v, cx, cy, r, r) / lobes) * r, 0.02)
    if "Lung Opacity" in has:
        cx, cy, r = findings.opacity
        att += 0.3 * lungs * np.exp(-1.5 * _radius(u, v, cx, cy, r, r) ** 2)
    device = np.zeros((size, size), dtype=bool)
    if "Support Devices" in has:
        p = np.asarray(findings.device).reshape(3, 1, 2)
        t = np.linspace(0.0, 1.0, 4 * size)[:, None]
        curve = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t**2 * p[2]
        tube = _curves(curve[None], np.ones((1, 4 * size)), pose, size, max(1.0, size / 64))
        device = tube > 0.5
        att += 0.7 * np.minimum(tube, 1.0)

    image = pose.contrast * (att - 0.4) + 0.4 + pose.exposure + noise
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[lungs > 0.5] = MASK_CLASSES["lungs"]
    mask[heart > 0.5] = MASK_CLASSES["heart"]
    mask[device] = MASK_CLASSES["devices"]
    return image, mask
