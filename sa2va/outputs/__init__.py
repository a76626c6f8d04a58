"""What the engine's probabilities become: ``masks`` (tensor helpers, overlays), ``refine`` and ``matting`` (the
refinement stack), ``objects`` (per-object masks and SAM2 scores), ``labels`` (a name per mask) and ``boxes``."""
