"""Synthetic cardiac MR phantoms in the exact M&Ms-2 layout: the project's built-in default data.

``crocnet phantom --out DIR --subjects N --seed S`` writes::

    DIR/dataset_information.csv              SUBJECT_CODE, DISEASE, VENDOR, SCANNER, FIELD
    DIR/dataset/NNN/NNN_LA_{ED,ES}.nii.gz    4-chamber long-axis bSSFP-like image, (H, W, 1) float64
    DIR/dataset/NNN/NNN_LA_{ED,ES}_gt.nii.gz labels 0 bg, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool
    DIR/dataset/NNN/NNN_SA_{ED,ES}[_gt].nii.gz   with --sa: short-axis stacks (H, W, Z), 10 mm apart

which :func:`crocnet.data.load_mnm2` reads like the real archive (float64 voxels, integer-valued
intensities and labels, an oblique affine whose column norms are the spacing). Not written: the 4D
``NNN_{LA,SA}_CINE`` files of the archive (the readers use the ED and ES frames only); and each view has an
affine of its own, so the LA plane and the SA stack of one phantom do not meet in world coordinates as a
real subject's do (a multi-view method would need one pose for both).

Model
-----
A 3D heart in its own frame ``(u, v, w)`` in mm: ``u`` along the LV long axis (mitral plane at ``u = 0``,
apex at ``u = -L``), ``v`` across the 4-chamber plane from the RV to the LV lateral wall, ``w`` out of it.
The LV cavity is a truncated ellipsoid (narrower at the annulus than mid-ventricle), the myocardium a
thicker ellipsoid around it (the septum included), papillary muscles inside the cavity (labelled LV, as in
M&Ms-2), the RV an ellipsoid beside the septum minus the LV, with an unlabelled thin free wall, the atria
above the valve planes with thin walls and closed valve leaflets, patchy epicardial fat, and a mediastinum
of soft tissue and fat. The long-axis image is the plane ``w ≈ 0`` (slightly oblique); short-axis slices
are planes ``u = const``. Around the heart, a 2D body: torso outline with subcutaneous fat and chest-wall
muscle, lungs with vessels, spine, descending aorta, liver dome and arms.

ED → ES: the cavities shrink (by a disease-dependent ejection fraction), the base descends towards the
apex, the walls thicken and the atria fill. Diseases (``DISEASE`` column, M&Ms-2 codes): ``NOR``,
``LV`` (dilated LV, thin walls, low ejection), ``HCM`` (thick walls, small cavity), ``DRV`` (dilated RV).

Image formation: tissue intensities relative to blood (bright blood, dark myocardium, bright fat, dark
lung) with smooth texture, a multiplicative bias field, Gaussian blur (point spread), Rician noise, then
the vendor's intensity scale, rounded to integers. Three fake vendors differ in contrast, noise, blur,
bias and scale. Poses (in-plane rotation, position, obliquity), sizes, matrix (192–320) and in-plane
spacing (0.8–1.8 mm) are random.

Determinism: subject ``n`` is drawn from ``numpy.random.default_rng([seed, n])``, so the same seed gives
identical files, and subject ``n`` does not depend on how many subjects are written.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..atomic import atomic_savefig, atomic_write_text, exclusive, replacing
from ..outputs import check_output_file
from .mnm2 import INCOMPLETE, INFORMATION_COLUMNS, find_subjects, load_mnm2, read_information_rows
from .nifti import write_nifti
from .validation import DataError, name_list

__all__ = [
    "DISEASES",
    "VENDORS",
    "PhantomSubject",
    "Vendor",
    "main",
    "make_subject",
    "write_overview_png",
    "write_phantoms",
]


@dataclass(frozen=True)
class Vendor:
    """Acquisition traits of a fake vendor (intensities relative to blood = 1, noise relative to blood)."""

    name: str
    scanners: tuple[str, ...]
    blood_scale: tuple[float, float]  # stored intensity of blood
    myocardium: tuple[float, float]  # myocardium / blood
    fat: tuple[float, float]  # fat / blood
    noise: tuple[float, float]  # Rician sigma / blood
    blur: tuple[float, float]  # Gaussian point spread, sigma in pixels
    bias: tuple[float, float]  # amplitude of the log bias field


#: the fake vendors (scanner names are invented too)
VENDORS: tuple[Vendor, ...] = (
    Vendor(name="PHANTOM-A", scanners=("Alpha 15", "Alpha 30"), blood_scale=(850, 1200), myocardium=(0.30, 0.42),
           fat=(1.5, 2.6), noise=(0.015, 0.035), blur=(0.5, 0.9), bias=(0.10, 0.30)),
    Vendor(name="PHANTOM-B", scanners=("Beta 1", "Beta X"), blood_scale=(140, 320), myocardium=(0.34, 0.50),
           fat=(1.2, 1.9), noise=(0.025, 0.05), blur=(0.6, 1.1), bias=(0.15, 0.40)),
    Vendor(name="PHANTOM-C", scanners=("Gamma HD",), blood_scale=(1800, 3600), myocardium=(0.24, 0.38),
           fat=(1.7, 2.8), noise=(0.02, 0.045), blur=(0.4, 0.8), bias=(0.10, 0.35)),
)

#: disease codes (M&Ms-2's) and their sampling weights
DISEASES: dict[str, float] = {"NOR": 0.4, "LV": 0.2, "HCM": 0.2, "DRV": 0.2}

# Tissue classes. Label of each: 1 LV blood (and papillary muscles), 2 myocardium, 3 RV blood, else 0.
AIR, LUNG, FAT, MUSCLE, LIVER, BONE, MARROW, VESSEL, SOFT = range(9)
LV_BLOOD, MYO, RV_BLOOD, ATRIUM, WALL, PAPILLARY = range(9, 15)
_N_TISSUES = 15
_TISSUE_LABEL = np.zeros(_N_TISSUES, dtype=np.uint8)
_TISSUE_LABEL[[LV_BLOOD, PAPILLARY]] = 1
_TISSUE_LABEL[MYO] = 2
_TISSUE_LABEL[RV_BLOOD] = 3


@dataclass
class PhantomSubject:
    """One synthetic subject: its csv row and its images.

    Attributes:
        code: three-digit subject code, e.g. ``"001"``.
        disease, vendor, scanner, field: the ``dataset_information.csv`` row.
        images: ``{(view, phase): (image float64 (H, W, Z), label uint8 (H, W, Z), affine (4, 4))}``.
    """

    code: str
    disease: str
    vendor: str
    scanner: str
    field: float
    images: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


#: the smooth random fields of one image and their coarse-grid sizes (cells per axis)
_FIELD_CELLS = {"fat": 8, "soft": 8, "rough": 24, "patches": 12, "fine_patches": 20}


# ----------------------------------------------------------------------------------------------- random
def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 6) -> np.ndarray:
    """A smooth random field of unit standard deviation: Gaussian bumps on a coarse grid, one per cell.

    Separable: ``field = coarse ×_a B_a`` over the axes, with ``B_a`` the ``(n_a, cells)`` Gaussian basis of
    axis ``a`` (axes of length 1 get a constant basis), so it costs a few small matrix products.
    """
    bases = []
    for n in shape:
        if n == 1:
            bases.append(np.ones((1, 1)))
            continue
        centers = np.linspace(-0.5, n - 0.5, cells)
        width = 0.6 * (n / (cells - 1))
        bases.append(np.exp(-(((np.arange(n)[:, None] - centers[None]) / width) ** 2)))
    field = rng.standard_normal(tuple(b.shape[1] for b in bases))
    for axis, basis in enumerate(bases):
        field = np.moveaxis(np.tensordot(basis, np.moveaxis(field, axis, 0), axes=(1, 0)), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-6)


# ------------------------------------------------------------------------------------------------ heart
@dataclass
class _Heart:
    """Heart shape parameters of one phase, lengths in mm (see the module docstring for the frame)."""

    lv_length: float  # base (u = 0) to endocardial apex
    lv_radius: float  # mid-cavity radius
    lv_center: float  # fraction of the length where the cavity ellipsoid is centred (narrower annulus)
    wall: float  # LV wall thickness
    apex_wall: float
    rv_length: float
    rv_width: float  # RV cavity half-width beyond the septum (in the 4-chamber plane)
    rv_depth: float  # RV half-extent out of plane (wraps around the septum in short axis)
    rv_wall: float
    tricuspid: float  # u of the tricuspid plane (<= 0: more apical than the mitral plane)
    la_length: float
    la_radius: float
    ra_length: float
    ra_radius: float
    fat: float  # maximal epicardial fat thickness
    roughness: float  # relative amplitude of the irregularity of the endocardial borders (trabeculation)
    leaflets: float  # valve leaflets are drawn where the roughness field exceeds this level
    papillary: tuple[tuple[float, float, float, float, float], ...]  # (u, v, w, half-length, radius)
    shift: float  # how far the base moved towards the apex (ES)


def _sample_heart(rng: np.random.Generator, disease: str) -> tuple[_Heart, _Heart]:
    """ED and ES shapes of one subject."""
    size = rng.uniform(0.85, 1.15)
    length, radius, wall = size * rng.uniform(78, 98), size * rng.uniform(16, 23), rng.uniform(4.5, 8.0)
    ejection = rng.uniform(0.62, 0.78)  # ES / ED cavity radius
    rv_width = size * rng.uniform(16, 24)
    if disease == "LV":  # dilated, thin-walled, poorly contracting LV
        radius, length, wall = radius * rng.uniform(1.25, 1.45), length * 1.1, wall * 0.8
        ejection = rng.uniform(0.82, 0.92)
    elif disease == "HCM":  # thick walls, small hyper-contracting cavity
        radius, wall, ejection = radius * rng.uniform(0.75, 0.9), wall * rng.uniform(1.6, 2.3), rng.uniform(0.5, 0.65)
    elif disease == "DRV":
        rv_width *= rng.uniform(1.4, 1.8)
    papillary = tuple(
        (-length * rng.uniform(0.45, 0.65), radius * rng.uniform(0.5, 0.7), side * radius * rng.uniform(0.2, 0.5),
         length * rng.uniform(0.10, 0.16), rng.uniform(2.5, 4.5))
        for side in (-1, 1)
        if rng.random() < 0.8
    )
    ed = _Heart(
        lv_length=length,
        lv_radius=radius,
        lv_center=rng.uniform(0.30, 0.42),
        wall=wall,
        apex_wall=wall * rng.uniform(0.6, 0.9),
        rv_length=length * rng.uniform(0.8, 0.95),
        rv_width=rv_width,
        rv_depth=size * rng.uniform(30, 40),
        rv_wall=rng.uniform(2.0, 3.5),
        tricuspid=-rng.uniform(0, 10),
        la_length=size * rng.uniform(15, 24),
        la_radius=size * rng.uniform(14, 20),
        ra_length=size * rng.uniform(15, 24),
        ra_radius=size * rng.uniform(14, 20),
        fat=rng.uniform(0.5, 5),
        roughness=rng.uniform(0.02, 0.08),
        leaflets=rng.uniform(-0.5, 2.5),
        papillary=papillary,
        shift=0.0,
    )
    shortening = rng.uniform(0.84, 0.92)  # ES / ED length: the base descends towards the apex
    rv_ejection = rng.uniform(0.6, 0.8) if disease != "DRV" else rng.uniform(0.8, 0.9)
    atria = rng.uniform(1.08, 1.25)  # the atria fill during systole
    # the myocardial area of the 4-chamber section is kept: the wall thickens as the cavity shrinks
    r_es = radius * ejection
    wall_es = math.sqrt(wall * (2 * radius + wall) + r_es**2) - r_es
    es = replace(
        ed,
        lv_length=length * shortening,
        lv_radius=r_es,
        wall=wall_es,
        apex_wall=ed.apex_wall * wall_es / wall,
        rv_length=ed.rv_length * rng.uniform(0.85, 0.93),
        rv_width=rv_width * rv_ejection,
        rv_depth=ed.rv_depth * (0.5 + 0.5 * rv_ejection),
        rv_wall=ed.rv_wall * 1.2,
        la_length=ed.la_length * atria,
        la_radius=ed.la_radius * atria,
        ra_length=ed.ra_length * atria,
        ra_radius=ed.ra_radius * atria,
        papillary=tuple((u * shortening, v * ejection, w * ejection, h * 0.9, r * 1.3) for u, v, w, h, r in papillary),
        shift=length * (1 - shortening),
    )
    return ed, es


def _ellipsoid(u, v, w, center, axes) -> np.ndarray:
    """Normalised ellipsoid radius (< 1 inside); ``axes`` may be arrays (a locally varying dilation)."""
    return ((u - center[0]) / axes[0]) ** 2 + ((v - center[1]) / axes[1]) ** 2 + ((w - center[2]) / axes[2]) ** 2


def _paint_heart(tissue: np.ndarray, u, v, w, h: _Heart, fat_field, soft_field, rough_field) -> None:
    """Paint the heart, epicardial fat and mediastinum into ``tissue`` at heart-frame points ``(u, v, w)``.

    The fields (smooth, unit variance, on the same points) modulate the epicardial fat thickness, the
    mediastinum's extent and composition, and the irregularity of the cavity borders.
    """
    u = u + h.shift  # the base descends towards the apex; the apex stays where it was at ED
    a = h.lv_length * (1 - h.lv_center)  # cavity ellipsoid semi-axis along u
    lv_c = (-h.lv_length * h.lv_center, 0.0, 0.0)
    rough = 1 + h.roughness * rough_field
    cavity = _ellipsoid(u, v, w, lv_c, (a, h.lv_radius, h.lv_radius)) * rough
    epi_axes = (a + h.apex_wall, h.lv_radius + h.wall, h.lv_radius + h.wall)
    epi = _ellipsoid(u, v, w, lv_c, epi_axes) * (1 + 0.3 * h.roughness * rough_field)
    rv_c = (-h.rv_length * 0.45, -(h.lv_radius + h.wall) - 0.25 * h.rv_width, 0.0)
    rv_axes = (h.rv_length * 0.55, h.rv_width, h.rv_depth)
    rv = _ellipsoid(u, v, w, rv_c, rv_axes) * rough
    rv_outer = _ellipsoid(u, v, w, rv_c, tuple(x + h.rv_wall for x in rv_axes))
    la_c = (h.la_length * 0.85, h.lv_radius * 0.15, 0.0)
    ra_c = (h.tricuspid + h.ra_length * 0.85, rv_c[1] - h.rv_width * 0.35, 0.0)
    la = _ellipsoid(u, v, w, la_c, (h.la_length, h.la_radius, h.la_radius))
    ra = _ellipsoid(u, v, w, ra_c, (h.ra_length, h.ra_radius, h.ra_radius))
    la_wall = _ellipsoid(u, v, w, la_c, (h.la_length + 2, h.la_radius + 2, h.la_radius + 2))
    ra_wall = _ellipsoid(u, v, w, ra_c, (h.ra_length + 2, h.ra_radius + 2, h.ra_radius + 2))
    below_mitral, below_tricuspid = u <= 0, u <= h.tricuspid

    # mediastinum (soft tissue and fat) and epicardial fat, as dilations of the whole heart
    fat = h.fat * np.clip(fat_field, 0, None) + 0.5
    pad = 6 + 4 * soft_field
    heart_pad = np.minimum.reduce([
        _ellipsoid(u, v, w, lv_c, tuple(x + pad for x in epi_axes)),
        _ellipsoid(u, v, w, rv_c, tuple(x + h.rv_wall + pad for x in rv_axes)),
        _ellipsoid(u, v, w, la_c, (h.la_length + pad, h.la_radius + pad, h.la_radius + pad)),
        _ellipsoid(u, v, w, ra_c, (h.ra_length + pad, h.ra_radius + pad, h.ra_radius + pad)),
    ])
    tissue[heart_pad < 1] = np.where(soft_field[heart_pad < 1] > 1.0, FAT, SOFT)
    fat_shell = (
        (_ellipsoid(u, v, w, lv_c, tuple(x + fat for x in epi_axes)) < 1)
        | (_ellipsoid(u, v, w, rv_c, tuple(x + h.rv_wall + fat for x in rv_axes)) < 1)
    ) & (u <= 4)
    tissue[fat_shell] = FAT

    # atria (RA first: the LA wall then forms the interatrial septum); their blood runs into the ventricles
    tissue[(ra_wall < 1) & (u > h.tricuspid)] = WALL
    tissue[(ra < 1) & (u > h.tricuspid)] = ATRIUM
    tissue[(la_wall < 1) & (u > 0)] = WALL
    tissue[(la < 1) & (u > 0)] = ATRIUM

    # RV: free wall, then cavity (the LV myocardium below carves the septum out of it)
    tissue[(rv_outer < 1) & below_tricuspid] = WALL
    tissue[(rv < 1) & below_tricuspid] = RV_BLOOD
    # LV: myocardium (septum included), cavity, papillary muscles
    tissue[(epi < 1) & below_mitral] = MYO
    tissue[(cavity < 1) & below_mitral] = LV_BLOOD
    for pu, pv, pw, half, r in h.papillary:
        inside = _ellipsoid(u, v, w, (pu, pv, pw), (half, r, r)) < 1
        tissue[inside & (cavity < 1) & below_mitral] = PAPILLARY
    # valve leaflets: thin dark segments across each annulus, just above it, often partial or absent, so
    # the valve plane is mostly told by where the myocardium ends (as in real images)
    leaflet = rough_field > h.leaflets
    tissue[leaflet & (u > 0) & (u < 1.2) & (epi < 1.05) & (la < 1.4)] = WALL
    tissue[leaflet & (u > h.tricuspid) & (u < h.tricuspid + 1.2) & (rv < 1.05) & (epi > 1)] = WALL


# ------------------------------------------------------------------------------------------------- body
@dataclass
class _Body:
    """2D surroundings in the image plane, lengths in mm, in a body frame (x left-right, y front-back)."""

    center: np.ndarray  # torso centre relative to the heart's mitral-plane centre, image-plane mm
    angle: float  # torso orientation in the image plane
    half_width: float
    half_depth: float
    skin_fat: float
    muscle: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows of the outline perturbation
    spine: tuple[float, float, float]  # (x, y, radius)
    aorta: tuple[float, float, float]
    liver: tuple[float, float, float, float] | None  # (x, y, half-width, half-depth)
    arms: tuple[tuple[float, float, float], ...]  # (x, y, radius)
    vessels: np.ndarray  # (n, 3): x, y, radius of lung vessels
    patch_level: float  # threshold of the random fields that place soft-tissue and fat patches in the chest


def _sample_body(rng: np.random.Generator, heart_angle: float, apex_direction: np.ndarray) -> _Body:
    half_width, half_depth = rng.uniform(155, 205), rng.uniform(105, 140)
    angle = heart_angle + math.radians(rng.normal(50, 15))
    # heart left-anterior in the chest: torso centre offset from the heart in the body frame
    offset_body = np.array([-rng.uniform(0.0, 0.3) * half_width, rng.uniform(0.05, 0.35) * half_depth])
    c, s = math.cos(angle), math.sin(angle)
    center = np.array([c * offset_body[0] - s * offset_body[1], s * offset_body[0] + c * offset_body[1]])
    apex_body = np.array([c * apex_direction[0] + s * apex_direction[1], -s * apex_direction[0] + c * apex_direction[1]])
    liver = None
    if rng.random() < 0.7:
        lx, ly = -offset_body + apex_body * rng.uniform(90, 130)
        liver = (float(lx), float(ly), rng.uniform(80, 120), rng.uniform(60, 90))
    arms = tuple(
        (side * (half_width + rng.uniform(20, 45)), rng.uniform(-30, 30), rng.uniform(38, 55))
        for side in (-1, 1)
        if rng.random() < 0.6
    )
    n_vessels = rng.integers(8, 25)
    vessels = np.column_stack([
        rng.uniform(-half_width, half_width, n_vessels),
        rng.uniform(-half_depth, half_depth, n_vessels),
        rng.uniform(1.5, 4.0, n_vessels),
    ])
    spine_y = half_depth * rng.uniform(0.55, 0.7)
    return _Body(
        center=center,
        angle=angle,
        half_width=half_width,
        half_depth=half_depth,
        skin_fat=rng.uniform(5, 16),
        muscle=rng.uniform(6, 14),
        harmonics=np.column_stack([np.arange(2, 6), rng.uniform(0, 0.05, 4), rng.uniform(0, 2 * np.pi, 4)]),
        spine=(rng.uniform(-10, 10), spine_y, rng.uniform(14, 19)),
        aorta=(rng.uniform(-35, -20), spine_y - rng.uniform(20, 30), rng.uniform(10, 14)),
        liver=liver,
        arms=arms,
        vessels=vessels,
        patch_level=rng.uniform(0.8, 1.6),
    )


def _paint_body(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, b: _Body, patches: np.ndarray,
                fine_patches: np.ndarray) -> None:
    """Paint the torso, lungs, spine, aorta, liver and arms at image-plane points (mm, heart-centred).

    ``patches`` and ``fine_patches`` are smooth random fields on the same points; where they exceed the
    body's level, irregular soft-tissue patches and vessels cover parts of the lungs.
    """
    c, s = math.cos(b.angle), math.sin(b.angle)
    bx = c * (x - b.center[0]) + s * (y - b.center[1])
    by = -s * (x - b.center[0]) + c * (y - b.center[1])
    phi = np.arctan2(by / b.half_depth, bx / b.half_width)
    outline = 1 + sum(a * np.cos(k * phi + p) for k, a, p in b.harmonics)
    r = np.sqrt((bx / b.half_width) ** 2 + (by / b.half_depth) ** 2) / outline

    def disc(cx, cy, radius, dilate=0.0):
        return (bx - cx) ** 2 + (by - cy) ** 2 < (radius + dilate) ** 2

    for ax, ay, ar in b.arms:
        tissue[disc(ax, ay, ar)] = FAT
        tissue[disc(ax, ay, ar - 6)] = MUSCLE
        tissue[disc(ax + 4, ay, ar * 0.3)] = BONE
        tissue[disc(ax + 4, ay, ar * 0.3 - 3)] = MARROW
    scale = min(b.half_width, b.half_depth)
    skin_fat = b.skin_fat * (1 + 0.5 * np.cos(2 * phi + b.harmonics[0, 2]))  # thicker on two sides
    tissue[r < 1] = FAT
    tissue[r < 1 - skin_fat / scale] = MUSCLE
    inner = r < 1 - (skin_fat + b.muscle) / scale
    tissue[inner] = LUNG
    if b.liver is not None:
        lx, ly, lw, ld = b.liver
        tissue[inner & (((bx - lx) / lw) ** 2 + ((by - ly) / ld) ** 2 < 1)] = LIVER
    lung = tissue == LUNG
    tissue[lung & (patches > b.patch_level)] = SOFT
    tissue[lung & (fine_patches > b.patch_level + 1.0)] = VESSEL
    for vx, vy, vr in b.vessels:
        tissue[inner & (tissue == LUNG) & disc(vx, vy, vr)] = VESSEL
    sx, sy, sr = b.spine
    tissue[inner & disc(sx, sy, sr, 12)] = MUSCLE
    tissue[disc(sx, sy, sr)] = BONE
    tissue[disc(sx, sy, sr - 2.5)] = MARROW
    ax_, ay_, ar_ = b.aorta
    tissue[inner & disc(ax_, ay_, ar_, 2)] = WALL
    tissue[inner & disc(ax_, ay_, ar_)] = VESSEL


# ---------------------------------------------------------------------------------------------- imaging
def _tissue_intensities(rng: np.random.Generator, vendor: Vendor) -> np.ndarray:
    """Mean intensity of each tissue class relative to LV blood."""
    myo = _uniform(rng, vendor.myocardium)
    table = np.zeros(_N_TISSUES)  # AIR stays 0
    table[LUNG] = rng.uniform(0.03, 0.10)
    table[FAT] = _uniform(rng, vendor.fat)
    table[MUSCLE] = rng.uniform(0.8, 1.3) * myo
    table[LIVER] = rng.uniform(0.8, 1.4) * myo
    table[BONE] = rng.uniform(0.05, 0.15)
    table[MARROW] = rng.uniform(0.5, 1.0)
    table[VESSEL] = rng.uniform(0.6, 1.1)
    table[SOFT] = rng.uniform(0.7, 1.2) * myo
    table[LV_BLOOD] = 1.0
    table[MYO] = myo
    table[RV_BLOOD] = rng.uniform(0.88, 1.05)
    table[ATRIUM] = rng.uniform(0.85, 1.05)
    table[WALL] = rng.uniform(0.85, 1.1) * myo
    table[PAPILLARY] = rng.uniform(1.0, 1.3) * myo
    return table


@dataclass
class _Imaging:
    """Image formation of one subject: tissue intensities (blood = 1), stored scale, noise, blur, bias."""

    intensities: np.ndarray
    scale: float
    noise: float
    blur: float
    bias: float


def _render(tissue: np.ndarray, rng: np.random.Generator, imaging: _Imaging) -> np.ndarray:
    """Intensities of a tissue map ``(Z, H, W)``: texture, bias field, blur, Rician noise, vendor scale."""
    shape = tissue.shape
    image = imaging.intensities[tissue]
    is_blood = np.isin(tissue, (LV_BLOOD, RV_BLOOD, ATRIUM, VESSEL))
    texture = np.where(is_blood, 0.06, 0.10) * _smooth_field(rng, shape, cells=12)
    image = image * (1 + texture)
    bias = np.exp(imaging.bias * _smooth_field(rng, shape, cells=3))
    image = image * bias
    image = ndimage.gaussian_filter(image, sigma=(0, imaging.blur, imaging.blur))
    sigma = imaging.noise
    image = np.sqrt((image + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    return np.round(image * imaging.scale)


def _affine(rng: np.random.Generator, spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """An oblique voxel → world matrix whose column norms are ``spacing`` (a random rotation)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2) + rng.uniform(-40, 40, 3)
    return affine


def _grid(rng: np.random.Generator) -> tuple[tuple[int, int], float]:
    """Matrix (192–320 per axis, often square) and in-plane spacing (0.8–1.8 mm) for a 330–480 mm field."""
    rows = int(rng.integers(12, 21)) * 16
    cols = rows if rng.random() < 0.6 else int(rng.integers(12, 21)) * 16
    spacing = float(np.clip(rng.uniform(330, 480) / max(rows, cols), 0.8, 1.8))
    return (rows, cols), round(spacing, 4)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _draw_information(rng: np.random.Generator) -> tuple[Vendor, str, float, str]:
    """A subject's vendor, disease, field strength and scanner: the first draws of its generator."""
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    disease = str(rng.choice(list(DISEASES), p=np.array(list(DISEASES.values()))))
    field = float(rng.choice([1.5, 3.0]))
    scanner = str(rng.choice(vendor.scanners))
    return vendor, disease, field, scanner


def _row(number: int, disease: str, vendor: str, scanner: str, field: float) -> dict[str, str]:
    """A ``dataset_information.csv`` row, as :func:`write_phantoms` writes it."""
    return {"SUBJECT_CODE": str(number), "DISEASE": disease, "VENDOR": vendor, "SCANNER": scanner, "FIELD": str(field)}


def _information_row(seed: int, number: int) -> dict[str, str]:
    """Subject ``number``'s ``dataset_information.csv`` row, cheaply: only the first draws of its generator."""
    vendor, disease, field, scanner = _draw_information(np.random.default_rng([seed, number]))
    return _row(number, disease, vendor.name, scanner, field)


def make_subject(seed: int, number: int, views: Sequence[str] = ("LA",)) -> PhantomSubject:
    """Generate subject ``number`` (1-based) of the phantom set with ``seed``; see the module docstring.

    Args:
        seed: the set's seed.
        number: the subject number; the subject is drawn from ``default_rng([seed, number])``.
        views: ``("LA",)`` or ``("LA", "SA")``.

    Returns:
        A :class:`PhantomSubject` with ED and ES images of each view: LA ``(H, W, 1)``, SA ``(H, W, Z)``.
    """
    _check_seed(seed)
    rng = np.random.default_rng([seed, number])
    vendor, disease, field, scanner = _draw_information(rng)
    ed, es = _sample_heart(rng, disease)
    imaging = _Imaging(
        intensities=_tissue_intensities(rng, vendor),
        scale=_uniform(rng, vendor.blood_scale),
        noise=_uniform(rng, vendor.noise),
        blur=_uniform(rng, vendor.blur),
        bias=_uniform(rng, vendor.bias) * (1.3 if field == 3.0 else 1.0),
    )
    images = {}
    for view in views:
        if view not in ("LA", "SA"):
            raise ValueError(f"views must be LA and/or SA, got {view!r}")
        (rows, cols), spacing = _grid(rng)
        # pose: the apex points roughly towards +i (down in an image display), RV towards -j (left)
        angle = math.radians(rng.uniform(-35, 35)) if view == "LA" else math.radians(rng.uniform(0, 360))
        base_dir = np.array([-math.cos(angle), math.sin(angle)])  # +u in the (i, j) plane
        side_dir = np.array([math.sin(angle), math.cos(angle)])  # +v in the (i, j) plane
        body = _sample_body(rng, angle, -base_dir)
        fields = {name: _smooth_field(rng, (rows, cols), cells) for name, cells in _FIELD_CELLS.items()}
        i = (np.arange(rows) - (rows - 1) / 2) * spacing
        j = (np.arange(cols) - (cols - 1) / 2) * spacing
        x, y = np.meshgrid(i, j, indexing="ij")  # image-plane mm, centred on the field of view
        center = rng.uniform(-0.08, 0.08, 2) * (rows * spacing, cols * spacing)
        if view == "LA":
            # heart frame origin (mitral-plane centre) so that the heart sits near the image centre
            center = center + base_dir * (ed.lv_length - ed.la_length) / 2
            tilt = rng.uniform(-0.12, 0.12, 2)
            offset = rng.uniform(-4, 4)
            u = (x - center[0]) * base_dir[0] + (y - center[1]) * base_dir[1]
            v = (x - center[0]) * side_dir[0] + (y - center[1]) * side_dir[1]
            u, v, w = u[None], v[None], (offset + tilt[0] * u + tilt[1] * v)[None]
            z_spacing = 1.0
            depth = 1
        else:
            # short-axis planes u = const from above the base to beyond the apex, 10 mm apart
            z_spacing = 10.0
            levels = np.arange(rng.uniform(0, 8), -(ed.lv_length + ed.apex_wall + 10), -z_spacing)
            depth = len(levels)
            shape = (depth, rows, cols)
            v = np.broadcast_to((x - center[0]) * side_dir[0] + (y - center[1]) * side_dir[1], shape)
            w = np.broadcast_to((x - center[0]) * base_dir[0] + (y - center[1]) * base_dir[1], shape)
            u = np.broadcast_to(levels[:, None, None], shape)
        affine = _affine(rng, (spacing, spacing, z_spacing), (rows, cols, depth))
        surroundings = np.full((rows, cols), AIR, dtype=np.uint8)
        _paint_body(surroundings, x - center[0], y - center[1], body, fields["patches"], fields["fine_patches"])
        heart_fields = [np.broadcast_to(fields[k], (depth, rows, cols)) for k in ("fat", "soft", "rough")]
        for phase, heart in (("ED", ed), ("ES", es)):
            tissue = np.repeat(surroundings[None], depth, axis=0)
            _paint_heart(tissue, u, v, w, heart, *heart_fields)
            image = _render(tissue, rng, imaging)
            label = _TISSUE_LABEL[tissue]
            images[(view, phase)] = (image.transpose(1, 2, 0), label.transpose(1, 2, 0), affine)
    return PhantomSubject(f"{number:03d}", disease, vendor.name, scanner, field, images)


# ---------------------------------------------------------------------------------------------- writing
def write_phantoms(
    out: str | Path, subjects: int = 60, seed: int = 0, views: Sequence[str] = ("LA",), start: int = 1
) -> list[PhantomSubject]:
    """Write ``subjects`` phantoms in the M&Ms-2 layout under ``out`` (see the module docstring).

    Args:
        out: the output folder (created); ``dataset_information.csv`` and ``dataset/NNN/`` go in it.
        subjects: how many subjects.
        seed: the set's seed (same seed → identical files).
        views: ``("LA",)`` or ``("LA", "SA")``.
        start: number of the first subject (codes ``start .. start + subjects - 1``, at most 999).

    An existing ``dataset_information.csv`` in ``out`` keeps its other subjects' rows: the new rows are
    merged in (the file is replaced atomically). A subject it already lists must have the same row as
    ``seed`` gives, and a subject's files already there must hold the images ``seed`` gives (the same
    phantom), else nothing is written: they were made with another seed. Files already there are kept, the
    missing ones written (each atomically), so a run killed half-way is finished by the same command.

    Returns:
        The generated subjects (with their arrays).

    Raises:
        ValueError: for a negative seed, subject numbers outside 1..999, ``out`` naming a file, or
            existing rows or files that disagree with the subjects to be written (nothing is written then).
        DataError: when the existing ``dataset_information.csv`` cannot be read.
    """
    out = Path(out)
    _check_seed(seed)
    if subjects < 1:
        raise ValueError(f"the number of subjects must be at least 1, got {subjects}")
    if not 1 <= start <= start + subjects - 1 <= 999:
        raise ValueError(f"subject numbers (start .. start + subjects - 1) must lie in 1..999, "
                         f"got {start}..{start + subjects - 1}")
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)  # the nearest existing path
    if blocker is not None and not blocker.is_dir():
        where = "is a file" if blocker == out else f"cannot be created: {blocker} is a file"
        raise ValueError(f"the output folder {out} {where}; expected a folder (it is created when missing)")
    with exclusive(out, "writing phantoms"):  # two runs into one folder would each merge the CSV, losing rows
        return _write_locked(out, subjects, seed, views, start)


def _write_locked(out: Path, subjects: int, seed: int, views: Sequence[str], start: int) -> list[PhantomSubject]:
    info_path = out / "dataset_information.csv"
    columns, rows = read_information_rows(info_path) if info_path.exists() else (list(INFORMATION_COLUMNS), {})
    numbers = range(start, start + subjects)
    _check_existing_rows(info_path, rows, seed, numbers)
    compared = {n: make_subject(seed, n, views) for n in numbers
                if any((out / "dataset" / f"{n:03d}").glob(f"{n:03d}_*.nii.gz"))}
    _check_existing_files(out, seed, compared.values())
    atomic_write_text(out / INCOMPLETE, f"crocnet phantom (seed {seed}, subjects {start}..{start + subjects - 1}) was "
                                        f"interrupted here: run it again to finish the set\n")
    made = []
    for number in numbers:
        subject = compared[number] if number in compared else make_subject(seed, number, views)
        for path, array, affine in _files(out, subject):
            if not path.exists():  # one that exists holds this very array (checked above)
                write_nifti(path, array.astype(np.float64), affine)
        made.append(subject)
    for s in made:
        row = _row(int(s.code), s.disease, s.vendor, s.scanner, s.field)
        rows[s.code] = {**rows.get(s.code, {}), **row}  # an existing row's extra columns stay
    _write_rows_atomically(info_path, columns, [rows[code] for code in sorted(rows, key=int)])
    (out / INCOMPLETE).unlink()
    return made


def _files(out: Path, subject: PhantomSubject):
    """``(path, array, affine)`` of each NIfTI file of ``subject`` under ``out``: image, then label."""
    folder = out / "dataset" / subject.code
    for (view, phase), (image, label, affine) in subject.images.items():
        yield folder / f"{subject.code}_{view}_{phase}.nii.gz", image, affine
        yield folder / f"{subject.code}_{view}_{phase}_gt.nii.gz", label, affine


def _differs(path: Path, array: np.ndarray, affine: np.ndarray) -> str | None:
    """Why the NIfTI file at ``path`` does not hold ``array`` on ``affine`` (``None`` when it does)."""
    try:
        image = nib.load(path)
        stored = np.asarray(image.dataobj, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a torn or foreign file
        return f"unreadable ({type(exc).__name__})"
    if stored.shape != array.shape:
        return f"shape {stored.shape}, expected {array.shape}"
    if not np.allclose(image.affine, affine, rtol=1e-5, atol=1e-4):
        return "another geometry (affine)"
    if not np.array_equal(stored, array.astype(np.float64)):
        return "other voxels"
    return None


def _check_existing_files(out: Path, seed: int, subjects) -> None:
    """Raise a ``ValueError`` unless each file of ``subjects`` already under ``out`` holds what ``seed`` gives."""
    conflicts = [(path, why) for subject in subjects for path, array, affine in _files(out, subject)
                 if path.exists() and (why := _differs(path, array, affine))]
    if conflicts:
        path, why = conflicts[0]
        raise ValueError(
            f"{len(conflicts)} file(s) under {out / 'dataset'} hold other images than seed {seed} gives, e.g. "
            f"{path}: {why}. They were made with another seed or are not phantoms; nothing was written. Use that "
            f"--seed, other subject numbers (--start), or another --out"
        )


def _same_value(column: str, old: str, new: str) -> bool:
    if column == "FIELD":
        try:
            return float(old) == float(new)
        except ValueError:
            pass
    return old == new


def _check_existing_rows(path: Path, rows: dict[str, dict[str, str]], seed: int, numbers: range) -> None:
    """Raise a ``ValueError`` unless every subject of ``numbers`` that ``rows`` lists has the row ``seed`` gives."""
    compared = INFORMATION_COLUMNS[1:]
    conflicts = []
    for number in numbers:
        code = f"{number:03d}"
        if code in rows:
            new = _information_row(seed, number)
            if not all(_same_value(c, rows[code].get(c, ""), new[c]) for c in compared):
                conflicts.append((code, rows[code], new))
    if conflicts:
        code, old, new = conflicts[0]

        def show(row: dict[str, str]) -> str:
            return ", ".join(f"{c}={row.get(c, '')}" for c in compared)

        raise ValueError(
            f"{path} already lists {len(conflicts)} of the subjects to write with other values than seed {seed} "
            f"gives ({name_list([c[0] for c in conflicts])}): expected subject {code} as {show(new)}, got "
            f"{show(old)}. Its files were made with another seed; nothing was written. Use that --seed, "
            f"other subject numbers (--start), or another --out"
        )


def _write_rows_atomically(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with replacing(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_overview_png(path: str | Path, root: str | Path, count: int = 4, real: str | Path | None = None) -> Path:
    """Write a PNG of the LA ED and ES images, with label contours, of the first ``count`` subjects of ``root``.

    Args:
        path: the PNG to write, ending in ``.png``.
        root: a phantom (or M&Ms-2) folder.
        count: number of phantom subjects shown, one per column.
        real: optionally a real M&Ms-2 folder (one subject folder such as ``mnm2/001``, or an archive)
            whose first subject is shown in the first column for comparison.
    """
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"the overview path must end in .png, got {str(path)!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_mnm2(root, subjects=list(find_subjects(root))[:count])
    if real is not None:
        records = load_mnm2(real, subjects=list(find_subjects(real))[:1]) + records
    subjects = list(dict.fromkeys((r.dataset, r.source.parent, r.subject) for r in records))
    fig, axes = plt.subplots(2, len(subjects), figsize=(3.2 * len(subjects), 6.6), squeeze=False)
    for col, key in enumerate(subjects):
        for row, r in enumerate(r for r in records if (r.dataset, r.source.parent, r.subject) == key):
            ax = axes[row, col]
            image = r.image[:, :, 0]
            ax.imshow(image, cmap="gray", vmin=0, vmax=np.percentile(image, 99.5))
            ax.contour(r.label[:, :, 0], levels=[0.5, 1.5, 2.5], colors=["red", "lime", "cyan"], linewidths=0.6)
            kind = "phantom" if (r.vendor or "").startswith("PHANTOM") else "real"
            ax.set_title(f"{kind} {r.subject} {r.phase}\n{r.vendor or ''} {r.disease or ''}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``crocnet phantom``: write synthetic cardiac phantoms in the M&Ms-2 layout."""
    parser = argparse.ArgumentParser(
        prog="crocnet phantom",
        description="Write synthetic 4-chamber long-axis cardiac MR phantoms (and optionally short-axis stacks) "
        "with labels in the exact M&Ms-2 layout: OUT/dataset_information.csv and "
        "OUT/dataset/NNN/NNN_{LA,SA}_{ED,ES}[_gt].nii.gz. The same seed gives identical files.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--subjects", type=int, default=60, help="number of subjects (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the set (default: 0)")
    parser.add_argument("--start", type=int, default=1, help="number of the first subject code (default: 1)")
    parser.add_argument("--sa", action="store_true", help="also write short-axis stacks (NNN_SA_{ED,ES})")
    parser.add_argument("--png", type=Path, default=None,
                        help="also write an overview PNG of the first few subjects to this path")
    parser.add_argument("--real", type=Path, default=None,
                        help="a real M&Ms-2 folder (e.g. one subject folder NNN/) whose first subject --png shows "
                        "beside the phantoms")
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error("--subjects must be at least 1")
    views = ("LA", "SA") if args.sa else ("LA",)
    try:
        if args.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
        if not 1 <= args.start <= args.start + args.subjects - 1 <= 999:
            raise ValueError(f"subject numbers --start .. --start + --subjects - 1 must lie in 1..999, got "
                             f"{args.start}..{args.start + args.subjects - 1}")
        if args.png is not None:
            check_output_file(args.png, "--png", (".png",), "PNG")
        t0 = time.perf_counter()
        made = write_phantoms(args.out, args.subjects, args.seed, views, args.start)
        elapsed = time.perf_counter() - t0
        print(f"wrote {len(made)} subjects to {args.out} in {elapsed:.1f} s ({elapsed / len(made):.2f} s per subject)")
        if args.png is not None:
            print(f"wrote {write_overview_png(args.png, args.out, real=args.real)}")
    except (ValueError, DataError, OSError, RuntimeError) as exc:  # OSError: a file for a folder; RuntimeError: locked
        print(f"crocnet phantom: error: {exc}", file=sys.stderr)
        return 2
    return 0
