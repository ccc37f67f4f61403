"""Segmenting directions: discovery (Voynov & Babenko 2020) and scoring (Voynov, Morozov & Babenko 2021, §3.2).

Architecture note
-----------------
Candidates come from ``common.random_directions`` (unit Gaussian, the baseline) or
``discover``; ``score`` fits ``operators`` to every candidate and selects one, which
``refine`` can then improve; ``figures`` draws the paper's figures; ``io`` reads
direction files. Each stage is a function over tensors; the CLI
(``factory/cli/directions.py``) only parses, calls one of them and prints.

- ``random_directions``: unit Gaussian directions, the baseline candidates.
- ``discover``: the 2020 method. A learnable matrix of K unit latent directions
  (the ``proj`` deformator of the reference code without bias: columns are
  renormalised in every forward) and a small CNN *reconstructor* that sees
  ``cat[G(z), G(z + eps d_k)]`` on channels and predicts ``k`` (cross-entropy)
  and ``eps`` (L1, weight 0.25). Both are trained by Adam on the same loss.
  Every step's randomness is a pure function of ``(seed, step)``, so a run
  resumed from an (atomic) checkpoint continues exactly as an uninterrupted one.
- ``score``: for every candidate ``h`` fit two pixelwise affine colour operators
  ``A_i c = M_i c + b_i`` (a ``[2,3,4]`` block per candidate, all candidates in one
  ``[K,2,3,4]`` tensor) minimising the restoration loss (paper eq. 3)

      L(h) = mean_pixels min_i || A_i G(z)[p] - G(z + s h)[p] ||^2

  (squared Euclidean colour error, summed over RGB, averaged over pixels and
  latents) by Adam on fresh latents every step. ``G(z)`` is computed once per
  step and shared by all candidates; the K shifted batches are rendered
  together (in chunks that bound memory). Each candidate's loss is a separate
  term of a sum, so candidates do not interact. Then, on held-out latents:
  the loss and the operator distance ``D = mean_pixels ||A_1 c - A_2 c||``.
  The selected direction is the one with the largest ``D`` among the
  ``keep_best`` fraction with the lowest loss.

Sign conventions (decided here, documented in docs/directions.md)
-----------------------------------------------------------------
The house luminance rule calls a pixel foreground when it gets LIGHTER along
the direction (``gray(G(z)) < gray(G(z + r h))``, the authors' code). Scoring
is blind to the sign of ``h``, so the selected direction is oriented so that
its luminance masks cover less than half of the image on average (objects are
the minority); when it is flipped, its operators are refitted for ``-h``.
The operators mask rule (paper eq. 5) assigns each pixel to the operator that
restores it best; the pixel is foreground when that operator gives the lighter
of the two predictions at that pixel (``gray(A_fg c) > gray(A_other c)``), the
same sign as the luminance rule. Operator 0 / 1 order in files does not matter.
"""
