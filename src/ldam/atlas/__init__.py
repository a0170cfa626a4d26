"""The atlas: every unit of a model, sampled per facet, beside its top dataset images.

Modules, inward to outward: :mod:`~ldam.atlas.topk` (one streaming pass over a dataset: each
unit's top-k rows and receptive-field crops), :mod:`~ldam.atlas.facets` (clustering a unit's top
images into facets), :mod:`~ldam.atlas.diagnostics` (split-R̂, ESS, dead and unconverged units),
:mod:`~ldam.atlas.store` (manifest and one atomic shard per unit), :mod:`~ldam.atlas.run` (the
per-unit work, in-process), :mod:`~ldam.atlas.ray_runner` (the same work as Ray tasks) and
:mod:`~ldam.atlas.site` (the static site).
"""
