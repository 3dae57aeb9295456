"""Fit scene parameters to a video: gradient descent through simulation and rendering.

``fit(spec, target, iterations=..., restarts=..., lr=...)`` optimises every ``learn = true`` value
of a scene so that its rendering matches a target clip (an mp4, a folder of frames or an array),
which may come from another renderer or camera: other resolution, colours, lighting, background,
compression noise. The command line is ``hybridsim fit SCENE --target VIDEO -o RUN_DIR``.

Target preparation (once, :mod:`hybridsim.fit.target`)
    Frames are resampled to the render size (area averaging when shrinking, bilinear when
    enlarging; the aspect ratio must match) and aligned in time to the scene's frames (nearest
    target frame to each scene frame time; the target's fps comes from the video, or ``fps`` in
    camera.json, else is taken equal to the scene's). A foreground mask comes from background
    subtraction: the background is the per-pixel temporal median of the whole clip; the *core* is
    where the RGB distance to it exceeds max(0.08, 5 x its MAD noise), cleaned by a 3x3 opening
    (specks) then closing (pinholes). The mask is 1 two pixels inside the core's half-contrast
    line and, in a 2 px band around the core, a coverage estimate a from pixel = a fg + (1 - a)
    background (projection onto fg - background, fg the local mean interior colour), so edges are
    sub-pixel and not grown by the threshold. Per frame the mask gives an area and a centroid;
    frames with < 4 px of mask count as "nothing visible". Pixels 2 px inside the core are always
    covered (a face shaded close to the background colour).

    Which background: the scene's own render when the target shows it on >= 90 % of the pixels
    (same look); else the target's first frame where the scene's frame 0 shows no moving object
    (around the objects: the last frame where they have left, else the median), provided the
    target's first frame differs from the median where the scene's objects start and the start is
    not learned (no learnable position / centre, no offset nuisance); else the temporal median.
    With another look, sphere and rigid fits drop cast shadows (darker copies of the background)
    from the mask and from the rendered coverage.

Observed coverage (targets that share the scene's look; ``FitSettings.coverage``)
    The mesh renderer's soft edges leave its coverage below 1 inside small objects and spread an
    edge over ~2 px, which the mask above (1 inside, edges rescaled by the interior colour) does
    not reproduce: on a self-rendered spring target at 64x48 the loss at the true values was 0.0898
    (silhouette 0.078, centroid 0.012), more than at a fit 6 % off in damping. So both sides also go
    through one smooth background subtraction (:func:`hybridsim.fit.target.observed_coverage`): per
    pixel a = clamp((pixel - bg) . s / (|s|^2 + threshold^2), 0, 1), s the 7x7 mean of
    pixel - bg weighted by |pixel - bg|^4, gated to where a pixel within 2 px differs from bg by
    more than the threshold; the target over its background, each render (rounded to 8 bits,
    straight-through) over the scene's empty render. At the true values it is exactly the target's.
    Levenberg-Marquardt first converges on the rendered coverage (smoother: soft interior), then
    restarts its damping and goes on with observed coverages to the unbiased minimum; the
    restarts' final losses and the Laplace residuals use the observed coverages. Adam (spheres,
    grid fluids, MPM, rigid scenes with more than 8 values) switches once the window covers the
    whole clip and the last ``observed_patience`` (5) losses lie within ``observed_plateau`` (2 %)
    of their smallest: its moments start from zero and its learning-rate schedule starts again at
    ``observed_lr`` (0.05) times ``lr`` (the observed loss is much steeper near its minimum); the
    switch iteration is in ``details["observed_from"]`` and fit.json (``observed_from_iteration``).
    Loss at the truth of a self-rendered target, rendered vs observed comparison: bouncing sphere
    0.0926 vs 5e-6, 2D smoke plume 0.214 vs 8e-6 (the smoke's rendered opacity is not what
    background subtraction of its semi-transparent image measures), MPM jelly 0.0388 vs 8e-6, MPM
    liquid column 0.0167 vs 8e-6. Targets with another look (whose contrast differs from the
    render's), fits with networks and finite-difference gradients keep the rendered coverage.

Loss (per iteration, on the current time window of frames; :mod:`hybridsim.fit.losses`)
    * ``silhouette`` (always, weight 1): mean over frames of 1 - soft IoU between the rendered
      alpha (soft sphere edges, differentiable) and the target mask, the soft IoU being the
      weighted Jaccard index sum(min(a, m)) / sum(max(a, m)) (exactly 1 when a == m, also for soft
      masks). Colour-blind, so it survives different palettes and lighting; it only has a gradient
      where silhouettes overlap.
    * ``centroid`` (always, weight 1): Charbonnier (scale 1 px) distance between the mask centroid
      and the alpha-weighted centroid of the render, on frames where the target is visible. Where
      the render covers < 1 px (ball off-screen) the projected sphere centre stands in. Smooth and
      nearly linear far away, so it pulls even when silhouettes do not overlap at all.
    * ``rgb`` (weight 0.1, minor): multi-scale (1, 1/2, 1/4 average pooling) Charbonnier image
      difference. Used only when the target looks like the scene: the mean absolute difference
      between the target's median background and the scene's background rendered without spheres
      is <= 0.05. Otherwise it is switched off, since with another palette it only adds bias
      (``FitSettings(rgb="on"|"off")`` forces it).
    * ``masks`` / ``tracks`` (weight 1, only when given): the user's per-frame mask PNGs and 2D pixel
      tracks of the objects (:mod:`hybridsim.fit.evidence`).
    * Nuisance values (``FitSettings(max_offset=, drag=)``): the target's start offset in
      fractional frames (sphere, rigid and MPM scenes) and an air-drag coefficient (sphere and
      rigid scenes), learned with the values and reported
      apart from them (:mod:`hybridsim.fit.nuisance`).
    * Coarse to fine in time: the window starts at the first third of the frames (at least 8) and
      grows linearly to all frames by iteration 20, so early (ballistic) frames fix the launch
      before later bounces are matched.
    * Restarts: restart 0 starts from the scene's values; restart k >= 1 starts from the best of 64
      uniform draws inside the ranges (unbounded: initial +- max(|v|, 1)/2, normal), ranked by the
      centroid loss of projected sphere centres (one batched rollout, no rendering). Each restart
      runs ``iterations`` Adam steps; the one with the lowest loss over all frames wins.
    * Ranges: a bounded value is lo + (hi - lo) * sigmoid(u), Adam works on u (float64); unbounded
      values are optimised directly. Adam (betas 0.5, 0.9) keeps ``lr`` for 15 iterations, then
      decays it by 0.85 per iteration down to 5 % of ``lr``.
      All schedules depend on the iteration index only, so a resumed fit equals an uninterrupted one.

Uncertainty (:mod:`hybridsim.fit.uncertainty`)
    Laplace / Gauss-Newton on per-frame image-moment residuals (centroid x, y and sqrt(area), in
    pixels; of the observed coverages when the fit ends on them) at the fitted values, Jacobian by central finite differences in float64, noise variance
    per residual block from the residuals themselves. Parameters along directions whose scaled
    curvature is negligible are reported ``identifiable: false`` with no uncertainty. These are
    statistical (noise) uncertainties only: a systematic mismatch between target and model (mask
    estimation, another renderer's edges) is not in them and can be larger.

Run directory (all files written atomically)
    fitted.toml (the scene, with camera.json applied when given, and the fitted values), fit.json,
    loss.png, side_by_side.mp4 (target | fit | |difference| at the render size), report.html
    (self-contained: PNG and mp4 embedded as base64), and the resumable checkpoint
    (checkpoint.json + checkpoint-<step>.safetensors, written after every iteration; rerunning the
    same command continues from it; a checkpoint for a different scene, target or setting is
    refused unless ``resume=False`` / ``--fresh``).
"""

from .losses import DEFAULT_WEIGHTS
from .networks import NetworkSettings
from .optimize import FitResult, FitSettings, fit
from .target import Target, foreground_mask, load_camera_json, load_target_frames, prepare_target

__all__ = ["fit", "FitResult", "FitSettings", "NetworkSettings", "Target", "prepare_target", "foreground_mask",
           "load_target_frames", "load_camera_json", "DEFAULT_WEIGHTS"]
