"""Seeded synthetic microscopy whose *domain* is set by a few parameters: fluorescence nuclei, EM sections
with mitochondria, and dense tissue.

The kit must work with no download, and a transferability demo needs several source domains
and a target that differ the way real microscopy datasets differ: object size and density,
signal-to-noise, optical blur, background level and gradient, intensity gamma, texture and
shape. :class:`SyntheticDomain` holds those knobs; :func:`generate` renders images with
instance labels. The paper's two other problems have their own: :class:`SyntheticTissueDomain`
and :func:`generate_tissue` draw a tessellation of cells, as an EM section with mitochondria or
as a dense membrane-stained tissue. Everything is a pure function of the domain, the image
count, the shape and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticDomain", "SyntheticData", "generate", "DEMO_SOURCES", "DEMO_TARGET", "DENSE_TISSUE", "EM_FIBSEM",
           "EM_SSTEM", "SyntheticTissue", "SyntheticTissueDomain", "generate_tissue"]


@dataclass(frozen=True)
class SyntheticDomain:
    """Parameters of one synthetic imaging domain.

    Attributes
    ----------
    name : str
    radius : (float, float)
        Range of the nucleus semi-axis length in pixels.
    density : float
        Nuclei per 10,000 pixels (before overlap rejection).
    elongation : float
        Largest ratio of the two semi-axes (1 = discs).
    snr : float
        Mean nucleus signal above background divided by the noise standard deviation.
    blur : float
        Standard deviation (pixels) of the Gaussian point-spread function.
    background : float
        Background level relative to the mean nucleus signal.
    gradient : float
        Amplitude of a smooth illumination gradient across the field, relative to the signal.
    gamma : float
        Intensity gamma of the detector response (1 = linear).
    texture : float
        Relative amplitude of chromatin-like texture inside nuclei (0 = flat).
    intensity_spread : float
        Relative spread of the per-nucleus brightness.
    """

    name: str = "default"
    radius: tuple[float, float] = (6.0, 10.0)
    density: float = 12.0
    elongation: float = 1.4
    snr: float = 12.0
    blur: float = 1.0
    background: float = 0.1
    gradient: float = 0.1
    gamma: float = 1.0
    texture: float = 0.2
    intensity_spread: float = 0.3

    def __post_init__(self):
        low, high = self.radius
        if not (0 < low <= high):
            raise ValueError(f"radius range must satisfy 0 < low <= high, got {self.radius}")
        for field_name in ("density", "snr", "gamma"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be > 0")
        for field_name in ("blur", "background", "gradient", "texture", "intensity_spread"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"{field_name} must be >= 0")
        if self.elongation < 1:
            raise ValueError("elongation must be >= 1")

    def with_(self, **changes) -> "SyntheticDomain":
        """A copy with some parameters changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class SyntheticData:
    """Images with instance labels from one domain.

    Attributes
    ----------
    images : list of (H, W) uint16 ndarray
    labels : list of (H, W) uint16 ndarray (0 = background)
    names : list of str
    domain : SyntheticDomain
    """

    images: list
    labels: list
    names: list
    domain: SyntheticDomain


def _place_nuclei(domain: SyntheticDomain, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Instance labels of non-overlapping ellipses (rejection sampling on a label canvas)."""
    height, width = shape
    labels = np.zeros(shape, np.uint16)
    n_target = rng.poisson(domain.density * height * width / 1e4)
    label = 0
    for _ in range(4 * n_target):
        if label >= n_target:
            break
        semi_major = rng.uniform(*domain.radius)
        semi_minor = semi_major / rng.uniform(1.0, domain.elongation)
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        extent = int(np.ceil(semi_major)) + 1
        y0, y1 = max(0, int(cy) - extent), min(height, int(cy) + extent + 1)
        x0, x1 = max(0, int(cx) - extent), min(width, int(cx) + extent + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        cos, sin = np.cos(angle), np.sin(angle)
        u, v = (dx * cos + dy * sin) / semi_major, (-dx * sin + dy * cos) / semi_minor
        inside = u * u + v * v <= 1.0
        if inside.sum() < 4:
            continue
        window = labels[y0:y1, x0:x1]
        # touching is allowed (real nuclei touch), overlapping more than a sliver is not
        if (window[inside] > 0).mean() > 0.05:
            continue
        label += 1
        window[inside & (window == 0)] = label
    return labels


def _render(domain: SyntheticDomain, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence image of the given nuclei: texture, PSF blur, background, gamma, noise."""
    height, width = labels.shape
    n_objects = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(1 - domain.intensity_spread, 1 + domain.intensity_spread, n_objects)])
    signal = brightness[labels]
    if domain.texture > 0:
        grain = ndi.gaussian_filter(rng.normal(size=labels.shape), 1.2)
        grain /= grain.std() + 1e-12
        signal = signal * np.clip(1 + domain.texture * grain, 0.2, None)
    signal = ndi.gaussian_filter(signal, domain.blur) if domain.blur > 0 else signal
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    direction = rng.uniform(0, 2 * np.pi)
    illumination = domain.gradient * (np.cos(direction) * xx + np.sin(direction) * yy)
    clean = np.clip(signal + domain.background + illumination, 0, None) ** domain.gamma
    noisy = clean + rng.normal(0, 1.0 / domain.snr, size=labels.shape)
    # detector offset and gain: a 16-bit camera image with a few hundred counts per unit signal
    return np.clip(100 + 400 * noisy, 0, 65535).astype(np.uint16)


def generate(domain: SyntheticDomain, n_images: int, shape: tuple[int, int] = (128, 128), seed: int = 0) -> SyntheticData:
    """Render ``n_images`` images of one domain.

    Parameters
    ----------
    domain : SyntheticDomain
    n_images : int
    shape : (int, int)
        Image height and width.
    seed : int
        Image ``i`` depends only on ``(seed, i)`` and the domain, so a longer list starts with
        the same images.

    Returns
    -------
    SyntheticData
        uint16 images and uint16 instance labels.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16, got {shape}")
    images, labels = [], []
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        label = _place_nuclei(domain, tuple(shape), rng)
        images.append(_render(domain, label, rng))
        labels.append(label)
    names = [f"{domain.name}_{index:03d}" for index in range(n_images)]
    return SyntheticData(images, labels, names, domain)


#: The target domain of the embedded demo: mid-sized, somewhat blurred, moderately noisy nuclei
#: on an uneven background.
DEMO_TARGET = SyntheticDomain(
    name="target", radius=(7.0, 11.0), density=11.0, snr=6.0, blur=1.5, background=0.25, gradient=0.3,
    gamma=1.0, texture=0.3,
)

#: Source domains of the embedded demo bank, from close to the target to far from it.
DEMO_SOURCES = (
    DEMO_TARGET.with_(name="near_target", snr=8.0, blur=1.3),
    DEMO_TARGET.with_(name="sharp_clean", snr=30.0, blur=0.5, background=0.05, gradient=0.0),
    DEMO_TARGET.with_(name="small_nuclei", radius=(3.0, 5.0), density=40.0),
    DEMO_TARGET.with_(name="large_nuclei", radius=(14.0, 20.0), density=3.5),
    DEMO_TARGET.with_(name="bright_background", background=0.9, gradient=0.8, snr=15.0),
    DEMO_TARGET.with_(name="very_noisy", snr=2.0, blur=2.5),
    DEMO_TARGET.with_(name="gamma_textured", gamma=2.2, texture=0.8, snr=20.0),
)


# -- beyond nuclei: electron microscopy and dense tissue --------------------------------------
@dataclass(frozen=True)
class SyntheticTissueDomain:
    """Parameters of a synthetic electron-microscopy section or dense plant-like tissue.

    Both are a tessellation of cells (a Voronoi partition of seeded points, warped by a smooth
    random field so that walls bend): an EM section draws the cell membranes dark on a grey,
    grainy cytoplasm and places mitochondria inside the cells (small, dark, elongated, with a
    darker rim and striped cristae; :attr:`mitochondria` > 0); a dense tissue draws the walls
    bright on dark cells, as a membrane stain under a confocal does (every pixel belongs to a
    cell; :attr:`mitochondria` = 0).

    Attributes
    ----------
    name : str
    cell_size : float
        Mean distance between cell centres in pixels.
    wall : float
        Membrane (wall) thickness in pixels.
    wall_contrast : float
        Membrane intensity relative to the cytoplasm: below 0 darker (EM), above 0 brighter (stain).
    mitochondria : float
        Mitochondria per 10,000 pixels (0: none, a dense tissue).
    mito_radius : (float, float)
        Range of a mitochondrion's semi-major axis in pixels.
    mito_elongation : float
        Largest ratio of a mitochondrion's semi-axes.
    mito_contrast : float
        Mitochondrion interior relative to the cytoplasm (negative: darker).
    grain : float
        Amplitude of the cytoplasm's fine texture (vesicles, ribosomes) relative to the signal.
    snr : float
        Signal contrast over the noise standard deviation.
    blur : float
        Gaussian point-spread function (pixels).
    warp : float
        Displacement amplitude (pixels) that bends the cell walls.
    gamma : float
        Intensity gamma of the detector response.
    """

    name: str = "tissue"
    cell_size: float = 40.0
    wall: float = 2.0
    wall_contrast: float = -0.6
    mitochondria: float = 4.0
    mito_radius: tuple[float, float] = (7.0, 14.0)
    mito_elongation: float = 2.5
    mito_contrast: float = -0.35
    grain: float = 0.15
    snr: float = 8.0
    blur: float = 1.0
    warp: float = 4.0
    gamma: float = 1.0

    def __post_init__(self):
        low, high = self.mito_radius
        if not 0 < low <= high:
            raise ValueError(f"mito_radius range must satisfy 0 < low <= high, got {self.mito_radius}")
        for field_name in ("cell_size", "wall", "snr", "gamma"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be > 0")
        for field_name in ("mitochondria", "grain", "blur", "warp"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"{field_name} must be >= 0")
        if self.mito_elongation < 1:
            raise ValueError("mito_elongation must be >= 1")

    def with_(self, **changes) -> "SyntheticTissueDomain":
        """A copy with some parameters changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class SyntheticTissue:
    """Images of one tissue domain with their three label images.

    Attributes
    ----------
    images : list of (H, W) uint8 ndarray
    cells : list of (H, W) uint16 ndarray
        The cells, 1..N, covering every pixel (dense instance labels).
    membranes : list of (H, W) uint8 ndarray
        1 on the cell walls (semantic labels of the membranes).
    mitochondria : list of (H, W) uint16 ndarray
        Mitochondria instances (0 = background; all 0 in a dense tissue).
    names : list of str
    domain : SyntheticTissueDomain
    """

    images: list
    cells: list
    membranes: list
    mitochondria: list
    names: list
    domain: SyntheticTissueDomain


def _cells(domain: SyntheticTissueDomain, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A warped Voronoi partition: (H, W) int32 labels 1..N covering the image."""
    from scipy.spatial import cKDTree

    height, width = shape
    n_cells = max(2, rng.poisson(height * width / domain.cell_size ** 2))
    centres = rng.uniform((0, 0), (height, width), size=(n_cells, 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    if domain.warp > 0:
        field = [ndi.gaussian_filter(rng.normal(size=shape), domain.cell_size / 3) for _ in range(2)]
        yy = yy + domain.warp * field[0] / (field[0].std() + 1e-12)
        xx = xx + domain.warp * field[1] / (field[1].std() + 1e-12)
    _, nearest = cKDTree(centres).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    return nearest.reshape(shape).astype(np.int32) + 1


def _walls(cells: np.ndarray, thickness: float) -> np.ndarray:
    """Pixels within ``thickness / 2`` of a change of cell: the membranes."""
    change = np.zeros(cells.shape, bool)
    change[:-1] |= cells[:-1] != cells[1:]
    change[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    return ndi.distance_transform_edt(~change) < max(thickness / 2, 0.5)


def _mitochondria(domain: SyntheticTissueDomain, cells: np.ndarray, walls: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Ellipses inside single cells, off the walls and each other: (H, W) uint16 instances."""
    height, width = cells.shape
    labels = np.zeros(cells.shape, np.uint16)
    n_target = rng.poisson(domain.mitochondria * height * width / 1e4)
    label = 0
    for _ in range(6 * n_target):
        if label >= n_target:
            break
        semi_major = rng.uniform(*domain.mito_radius)
        semi_minor = max(domain.mito_radius[0] / 2, semi_major / rng.uniform(1.0, domain.mito_elongation))
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        extent = int(np.ceil(semi_major)) + 2
        y0, y1 = max(0, int(cy) - extent), min(height, int(cy) + extent + 1)
        x0, x1 = max(0, int(cx) - extent), min(width, int(cx) + extent + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        cos, sin = np.cos(angle), np.sin(angle)
        u, v = ((xx - cx) * cos + (yy - cy) * sin) / semi_major, (-(xx - cx) * sin + (yy - cy) * cos) / semi_minor
        inside = u * u + v * v <= 1.0
        margin = u * u + v * v <= 1.6  # a little cytoplasm between a mitochondrion and what surrounds it
        if inside.sum() < 12 or walls[y0:y1, x0:x1][margin].any() or labels[y0:y1, x0:x1][margin].any():
            continue
        if len(np.unique(cells[y0:y1, x0:x1][inside])) > 1:
            continue
        label += 1
        labels[y0:y1, x0:x1][inside] = label
    return labels


def _render_tissue(domain: SyntheticTissueDomain, walls: np.ndarray, mitochondria: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """An 8-bit image: cytoplasm with grain, walls, mitochondria with a dark rim and cristae, blur, gamma, noise."""
    grain = ndi.gaussian_filter(rng.normal(size=walls.shape), 0.8)
    grain /= grain.std() + 1e-12
    signal = 0.5 + 0.5 * domain.grain * grain
    signal = np.where(walls, 0.5 + 0.5 * domain.wall_contrast, signal)
    inside = mitochondria > 0
    if inside.any():
        rim = inside & ~ndi.binary_erosion(inside, iterations=2)
        yy, xx = np.mgrid[0:walls.shape[0], 0:walls.shape[1]]
        cristae = 0.5 + 0.5 * np.sin((yy + xx) * 1.3 + 3 * grain)
        interior = 0.5 + 0.5 * domain.mito_contrast * (1 + 0.5 * cristae)
        signal = np.where(inside, interior, signal)
        signal = np.where(rim, 0.5 + 0.5 * domain.mito_contrast * 2.2, signal)
    signal = ndi.gaussian_filter(signal, domain.blur) if domain.blur > 0 else signal
    signal = np.clip(signal, 0, 1) ** domain.gamma
    noisy = signal + rng.normal(0, 0.5 / domain.snr, size=walls.shape)
    return np.clip(255 * noisy, 0, 255).astype(np.uint8)


def generate_tissue(domain: SyntheticTissueDomain, n_images: int, shape: tuple[int, int] = (128, 128),
                    seed: int = 0) -> SyntheticTissue:
    """Render ``n_images`` sections of one tissue domain (EM with mitochondria, or dense stained tissue).

    Parameters
    ----------
    domain : SyntheticTissueDomain
    n_images : int
    shape : (int, int)
    seed : int
        Image ``i`` depends only on ``(seed, i)`` and the domain.

    Returns
    -------
    SyntheticTissue
        uint8 images; dense cell labels, membrane masks and mitochondria instances.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16, got {shape}")
    images, cells, membranes, mitochondria = [], [], [], []
    for index in range(n_images):
        rng = np.random.default_rng([seed, index, 1])
        partition = _cells(domain, tuple(shape), rng)
        walls = _walls(partition, domain.wall)
        mito = _mitochondria(domain, partition, walls, rng) if domain.mitochondria > 0 else np.zeros(shape, np.uint16)
        images.append(_render_tissue(domain, walls, mito, rng))
        cells.append(partition.astype(np.uint16))
        membranes.append(walls.astype(np.uint8))
        mitochondria.append(mito)
    names = [f"{domain.name}_{index:03d}" for index in range(n_images)]
    return SyntheticTissue(images, cells, membranes, mitochondria, names, domain)


#: EM sections like a serial-section TEM of neurites at ~5 nm per pixel: dark membranes, dark mitochondria
#: 0.1-0.2 um across (several hundred px, as :data:`cte_kit.estimators.tasks.TASKS` expects of mitochondria).
EM_SSTEM = SyntheticTissueDomain(name="em_sstem", cell_size=60.0, wall=2.5, wall_contrast=-0.7, mitochondria=2.0,
                                 mito_radius=(10.0, 20.0), mito_elongation=2.5, mito_contrast=-0.4, grain=0.2,
                                 snr=7.0, blur=1.0)
#: EM sections like a FIB-SEM of neuropil: larger cells, thinner, fainter membranes, larger mitochondria.
EM_FIBSEM = EM_SSTEM.with_(name="em_fibsem", cell_size=80.0, wall=2.0, wall_contrast=-0.45, mitochondria=1.5,
                           mito_radius=(12.0, 24.0), mito_elongation=2.0, mito_contrast=-0.5, grain=0.1, snr=10.0,
                           blur=1.4)
#: Dense tissue like a membrane-stained confocal of plant cells: bright walls, every pixel a cell.
DENSE_TISSUE = SyntheticTissueDomain(name="dense_tissue", cell_size=22.0, wall=2.0, wall_contrast=0.8,
                                     mitochondria=0.0, grain=0.15, snr=6.0, blur=1.2, warp=3.0)
