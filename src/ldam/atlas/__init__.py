"""The atlas: every unit of a model, sampled per facet, beside its top dataset images.

Modules, inward to outward: :mod:`~ldam.atlas.topk` (one streaming pass over a dataset: each
unit's top-k rows and receptive-field crops), :mod:`~ldam.atlas.facets` (clustering a unit's top
images into facets), :mod:`~ldam.atlas.diagnostics` (split-R̂, ESS, dead and unconverged units),
:mod:`~ldam.atlas.store` (manifest and one atomic shard per unit), :mod:`~ldam.atlas.run` (the
per-unit work, in-process), :mod:`~ldam.atlas.ray_runner` (the same work as Ray tasks) and
:mod:`~ldam.atlas.site` (the static site).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .run import AtlasConfig, AtlasData, check_layers, expand_layers, in_process, manifest, probe, run_layers
from .store import AtlasConfigError, AtlasStore, UnitRecord


def dataset_for(dataset: str, split: str = "test", limit: int | None = None, mean: Sequence[float] = (0.0,),
                std: Sequence[float] = (1.0,)) -> AtlasData:
    """A zoo dataset (``"mnist"`` or ``"cifar10"``, local files only) as :class:`AtlasData`: uint8
    pictures and the model inputs ``(pixel/255 − mean) / std``; the first ``limit`` rows if given."""
    from ..data import load_cifar10, load_mnist, to_model_units

    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if dataset not in loaders:
        raise ValueError(f"the atlas knows the datasets {', '.join(loaders)}; for another, pass data=AtlasData(...)")
    pixels, _ = loaders[dataset](split, download_missing=False)
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    if limit is not None:
        pixels = pixels[:limit]
    inputs = to_model_units(pixels.float() / 255, mean, std)
    return AtlasData(inputs, pixels, name=f"{dataset}-{split}" + (f"[:{limit}]" if limit is not None else ""))


def atlas(model: nn.Module, layers: Sequence[str] | str, input_shape: Sequence[int], out: str | Path, *,
          data: AtlasData | torch.Tensor | None = None, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
          name: str | None = None, live_model: str | None = None, ray: bool | str | None = None,
          workers: int | None = None, force: bool = False, progress: bool = True, site: bool = True,
          **config: Any) -> AtlasStore:
    """Sample every unit of ``layers`` (``"*"`` for all) and write the atlas to ``out``.

    ``data`` (an :class:`AtlasData`, or model inputs ``[N, *input_shape]`` shown as pixels through
    ``mean``/``std``) gives each unit its top-k images and facets; without it every unit has one
    facet started from zero. Further keywords are :class:`AtlasConfig` fields (``k``, ``steps``,
    ``chains``, ``temperature``, ...). ``ray=True`` runs the blocks on a local Ray instance with
    ``workers`` CPUs, ``ray="ADDRESS"`` on an existing cluster. Re-running the same call continues
    where a killed run stopped; a different configuration in ``out`` is refused unless ``force``.
    The model is left exactly as found. Returns the :class:`AtlasStore` of ``out``.
    """
    shape = tuple(int(s) for s in input_shape)
    table = probe(model, shape)
    names = expand_layers(table, [layers] if isinstance(layers, str) else list(layers))
    check_layers(table, names)
    cfg = AtlasConfig(layers=names, **config)
    if isinstance(data, torch.Tensor):
        from ..render import pixel_display

        data = AtlasData(data, torch.from_numpy(pixel_display(data, mean, std)), name="data")
    store = AtlasStore(out)
    man = manifest(model, cfg, table, shape, data, name=name or type(model).__name__, mean=mean, std=std,
                   live_model=live_model)
    store.claim(man, force=force)
    if ray:
        from .ray_runner import ray_executor

        execute = ray_executor(model, cfg, shape, address=ray if isinstance(ray, str) else None, workers=workers)
    else:
        execute = in_process(model, cfg, shape)
    on_unit = on_layer = None
    if site:
        from . import site as site_mod

        def on_unit(rec: UnitRecord) -> None:
            site_mod.write_unit_page(store, rec, man)

        def on_layer(layer: str) -> None:
            site_mod.write_layer_index(store, man, layer)
            site_mod.write_index(store, man)

    run_layers(model, store, cfg, table, shape, data, execute, progress=progress, on_unit=on_unit, on_layer=on_layer)
    return store


__all__ = ["atlas", "dataset_for", "AtlasConfig", "AtlasData", "AtlasStore", "UnitRecord", "AtlasConfigError"]
