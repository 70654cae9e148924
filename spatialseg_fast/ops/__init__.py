"""The fused ops. Each has a plain-torch reference ``<op>_ref`` and a dispatcher ``<op>``."""
from .extract_patches import Patches, PatchSource, extract_patches, extract_patches_ref, prepare_patch_source, smooth_in_plane
from .landmark_distances import landmark_distances, landmark_distances_ref, landmark_positions
from .surface_distances import SurfaceDistances, surface_distances, surface_distances_ref

__all__ = [
    "Patches",
    "PatchSource",
    "extract_patches",
    "extract_patches_ref",
    "prepare_patch_source",
    "smooth_in_plane",
    "landmark_distances",
    "landmark_distances_ref",
    "landmark_positions",
    "SurfaceDistances",
    "surface_distances",
    "surface_distances_ref",
]
