"""Whole training runs: the default model on the CAT12 pseudo-subject cohort, or a model on your own
labelled scans. Both build the probabilistic atlas from the training label maps and store it,
the label table and the template grid in every checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model.network import build_model
from .data import prepare_subject
from .loop import TrainOptions, train
from .validation import slab_dice

LICENSE_NOTE = ("trained on pseudo-subjects made from the CAT12 T1 template and Neuromorphometrics labels "
                "(CC BY-NC 4.0: research use only)")


TEMPLATE_STEP_MM = 2.0  # the registration template's voxel size (registration runs at 4 and 2 mm)


def template_volume(image: np.ndarray, affine: np.ndarray):
    """The registration template stored with a model: `image` on a 2 mm grid."""
    from ..registration import _downsample, _normalised
    from ..volume import Volume

    # brain-median units: any scanner scale fits the float16 it is stored in
    return _downsample(Volume(_normalised(np.asarray(image, dtype=np.float32)), affine), TEMPLATE_STEP_MM)


def _run(model, train_pairs, val_pairs, out_dir, options, *, grid, spacing, metadata, resume, progress, stop_after,
         val_slabs, device, keep_epochs=False, template_image=None, stream=None, atlas_maps=None, keep_fc3=False):
    """train_pairs: (image, labels, name) triples, or None with `stream` (a callable epoch -> list
    of prepared subjects, made for `model`); atlas_maps: the label maps of the ProbBranch atlas
    (default: the training labels)."""
    from ..datasets.atlas import build_atlas

    values = model.config.output_values()
    if model.prob is not None and not resume and not keep_fc3:
        # start from the atlas prior: with the main path's last layer at zero the first logits
        # are ProbBranch's alone (argmax = the atlas's most frequent class); the auxiliary losses
        # train BaseNet and DistBranch from the first step, and fc3 opens up as they improve
        torch.nn.init.zeros_(model.fc3.weight)
        torch.nn.init.zeros_(model.fc3.bias)
    if template_image is None:  # the mean training image stands in for a template
        template_image = np.mean([img for img, _, _ in train_pairs], axis=0)
    model.template = template_volume(template_image, grid[1])
    atlas = None
    if model.prob is not None:
        last = Path(out_dir) / "last.safetensors"
        if resume and last.is_file():  # the run's own atlas (rebuilding it from 40 subjects takes minutes)
            from ..model.io import load_model

            atlas = load_model(last).atlas
        else:
            atlas = build_atlas(atlas_maps if atlas_maps is not None else [lab for _, lab, _ in train_pairs], values)
    if progress and train_pairs is not None:
        print(f"preparing {len(train_pairs)} training and {len(val_pairs)} validation subjects", flush=True)
    if train_pairs is None:
        subjects = stream
    else:
        subjects = [prepare_subject(model, img, lab, spacing, name) for img, lab, name in train_pairs]
    # validation subjects live on the training device (moved once; slab_dice would copy them per epoch)
    val_subjects = [prepare_subject(model, img, lab, spacing, name).to(device) for img, lab, name in val_pairs]
    val_atlas = atlas.to(device) if atlas is not None else None
    validate = None
    if val_subjects:
        validate = lambda m: slab_dice(m, val_subjects, val_atlas, slabs=val_slabs, precision=options.precision)
    meta = dict(metadata)
    meta["template"] = {"shape": list(grid[0]), "affine": np.asarray(grid[1]).tolist()}
    meta["subjects"] = {"train": [n for _, _, n in train_pairs] if train_pairs is not None else "stream",
                        "validation": [n for _, _, n in val_pairs]}
    result = train(model, subjects, out_dir, options, atlas=atlas, validate=validate, resume=resume, progress=progress,
                   metadata=meta, stop_after=stop_after, device=device, keep_epochs=keep_epochs)
    return result


# Seeds of the wide distribution's streams: each subject is (seed, index), so separate seeds keep
# training, atlas, validation and test subjects apart (bench/heldout_warped.py uses its own).
WIDE_SEEDS = {"train": 1000, "atlas": 1500, "validation": 2000, "test": 3000}
ATLAS_SUBJECTS = 40
"""Wide subjects whose labels make the ProbBranch atlas: an honest prior, as uncertain as the
anatomy the network will meet, instead of one sharpened by ten mildly warped maps."""


def _init_from(model, path) -> None:
    """Start `model` from the weights of the model file `path` (same configuration)."""
    from ..model.io import load_model

    source = load_model(path)
    if source.config != model.config:
        raise ValueError(f"--init {path}: that model has another configuration than this run's")
    model.load_state_dict(source.state_dict())


def _train_wide(out_dir, options, *, preset, seed, n_val, val_slabs, resume, progress, stop_after, atlas_subjects,
                device, keep_epochs=False, init=None):
    from ..datasets import label_table, load_source, template_grid
    from ..datasets.variability import Variability
    from .stream import SubjectPool, wide_cohort

    values, names = label_table()
    model = build_model(preset, len(values), seed=seed, intensity_reference="brain_median", label_values=values,
                        label_names=names)
    last = Path(out_dir) / "last.safetensors"
    if resume and last.is_file():  # the run's own validation set and start, whatever the caller passes
        from ..model.io import read_config

        saved = read_config(last)[1]
        n_val = len(saved.get("subjects", {}).get("validation", [])) or n_val
        init = saved.get("init", init)
    elif init is not None:
        _init_from(model, init)
    base = load_source("cat12")
    grid = template_grid()
    spacing = tuple(float(s) for s in np.linalg.norm(grid[1][:3, :3], axis=0))
    v = Variability()
    atlas_maps = None
    if model.prob is not None and not (resume and (Path(out_dir) / "last.safetensors").is_file()):
        if progress:
            print(f"making the atlas from {atlas_subjects} wide subjects", flush=True)
        atlas_maps = [s.labels for s in wide_cohort(base, atlas_subjects, WIDE_SEEDS["atlas"] + seed, v)]
    val = wide_cohort(base, n_val, WIDE_SEEDS["validation"] + seed, v)
    pool = SubjectPool(model, base, WIDE_SEEDS["train"] + seed, options.pool, options.refresh, v, spacing, progress)
    meta = {"data": f"wide stream seed {WIDE_SEEDS['train'] + seed} (pool {options.pool}, {options.refresh} fresh per "
                    f"epoch), atlas from {atlas_subjects} wide subjects", "license": LICENSE_NOTE,
            "variability": v.as_dict()}
    if init is not None:
        meta["init"] = str(init)
    return _run(model, None, [(s.image, s.labels, s.name) for s in val], out_dir, options, grid=grid, spacing=spacing,
                metadata=meta, resume=resume, progress=progress, stop_after=stop_after, val_slabs=val_slabs,
                device=device, keep_epochs=keep_epochs, template_image=base.image, stream=pool, atlas_maps=atlas_maps, keep_fc3=init is not None)


def train_default(out_dir, options: TrainOptions | None = None, *, preset: str = "full", seed: int = 0,
                  n_train: int = 10, n_val: int = 5, val_slabs: int = 6, resume: bool = False, progress: bool = True,
                  stop_after: int | None = None, atlas_subjects: int = ATLAS_SUBJECTS, init=None, device="auto",
                  keep_epochs: bool = False):
    """The shipped model's recipe: `preset` with the 135 Neuromorphometrics classes, on CAT12
    pseudo-subjects. ``options.cohort == "wide"``: a stream of fresh subjects
    of the wide distribution (training/stream.py), the atlas from `atlas_subjects` more, validated
    on `n_val` wide subjects; "paper": the paper's split (10 training subjects, datasets.paper_split).
    init: a model file of the same preset to start from (wide only; e.g. the shipped weights).
    device: where to train ("auto": a CUDA GPU when there is one); keep_epochs: keep every epoch's
    checkpoint in ``out_dir/epochs/`` (both as in ``loop.train``).
    Checkpoints in `out_dir` (best.safetensors is the model to use)."""
    from ..datasets import label_table, template_grid
    from ..datasets.cohort import SPLIT, make_cohort, load_source
    from ..inference import resolve_device

    device = resolve_device(device)  # a bad device fails now, not after minutes of data preparation

    if resume and options is None:
        from .loop import saved_options

        options = saved_options(out_dir)
    options = options or TrainOptions()
    if options.cohort == "wide":
        return _train_wide(out_dir, options, preset=preset, seed=seed, n_val=n_val, val_slabs=min(val_slabs, 4), resume=resume,
                           progress=progress, stop_after=stop_after, atlas_subjects=atlas_subjects, init=init,
                           device=device, keep_epochs=keep_epochs)
    values, names = label_table()
    model = build_model(preset, len(values), seed=seed, intensity_reference="brain_median", label_values=values,
                        label_names=names)
    base = load_source("cat12")
    train_set = make_cohort(base, min(n_train, SPLIT["train"][1]), seed, start=SPLIT["train"][0])
    val_set = make_cohort(base, min(n_val, SPLIT["validation"][1]), seed, start=SPLIT["validation"][0])
    grid = template_grid()
    spacing = tuple(float(s) for s in np.linalg.norm(grid[1][:3, :3], axis=0))
    return _run(model, [(s.image, s.labels, s.name) for s in train_set], [(s.image, s.labels, s.name) for s in val_set],
                out_dir, options, grid=grid, spacing=spacing,
                metadata={"data": f"cohort seed {seed}", "license": LICENSE_NOTE}, resume=resume, progress=progress,
                stop_after=stop_after, val_slabs=val_slabs, device=device, keep_epochs=keep_epochs,
                template_image=base.image)


def train_on_folders(images, labels, out_dir, options: TrainOptions | None = None, *, preset: str = "full",
                     seed: int = 0, val_fraction: float = 0.2, val_slabs: int = 6, resume: bool = False,
                     progress: bool = True, stop_after: int | None = None, device="auto", keep_epochs: bool = False):
    """Train on your own scans: NIfTI images in `images` and label maps in `labels`, matched by
    file name, all on one grid (e.g. affinely registered to one template and resampled), skull-
    stripped (0 outside the brain). The classes are 0 plus every label value found; the last
    `val_fraction` of the pairs (by name) validate. device, keep_epochs: as in :func:`train_default`."""
    from ..inference import resolve_device
    from ..volume import NIFTI_SUFFIXES, load_label_map

    device = resolve_device(device)

    import nibabel as nib

    images, labels = Path(images), Path(labels)
    for folder in (images, labels):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
    names = sorted(p.name for p in images.iterdir() if p.name.lower().endswith(NIFTI_SUFFIXES))
    names = [n for n in names if (labels / n).is_file()]
    if len(names) < 2:
        raise ValueError(f"need at least 2 image/label pairs with the same file name in {images} and {labels}; found {len(names)}")
    pairs, grid = [], None
    for n in names:
        img = nib.as_closest_canonical(nib.load(str(images / n)))
        lab = load_label_map(labels / n)
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        lab_img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(lab.data), lab.affine))
        lab_data = np.asarray(lab_img.dataobj)
        if grid is None:
            grid = (data.shape, img.affine)
        if (data.shape != grid[0] or lab_data.shape != grid[0] or not np.allclose(img.affine, grid[1], atol=1e-3)
                or not np.allclose(lab_img.affine, grid[1], atol=1e-3)):
            raise ValueError(f"{n}: image and labels must all share one grid (shape {grid[0]}); resample them first")
        if not np.isfinite(data).all():
            raise ValueError(f"{images / n}: contains NaN or infinite values")
        pairs.append((data, lab_data.astype(np.int64), n))
    values = sorted({0} | set(np.unique(np.concatenate([np.unique(p[1]) for p in pairs])).tolist()))
    n_val = max(1, int(round(len(pairs) * val_fraction))) if len(pairs) > 2 else 0
    options = options or TrainOptions()
    model = build_model(preset, len(values), seed=seed, intensity_reference="brain_median", label_values=values,
                        label_names=tuple(str(v) for v in values))
    spacing = tuple(float(s) for s in np.linalg.norm(grid[1][:3, :3], axis=0))
    return _run(model, pairs[: len(pairs) - n_val], pairs[len(pairs) - n_val :], out_dir, options, grid=grid,
                spacing=spacing, metadata={"data": f"{images} + {labels}"}, resume=resume, progress=progress,
                stop_after=stop_after, val_slabs=val_slabs, device=device, keep_epochs=keep_epochs)


def export_default(checkpoint, dst=None, card: dict | None = None):
    """A trained checkpoint of the default recipe as the shipped model: float16 weights, the sparse
    atlas, the 2 mm CAT12 registration template, the training record as model card; written to
    `dst` (default: the package's weights/default.safetensors)."""
    from ..datasets import load_source, template_grid
    from ..model.io import export_model

    if dst is None:
        dst = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"
    template = template_volume(load_source("cat12").image, template_grid()[1])
    return export_model(checkpoint, dst, dtype=torch.float16, template=template, card=card)
