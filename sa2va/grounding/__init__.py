"""The grounding head: the mask side of Sa2VA.

``sam2`` (SAM2's image encoder and mask decoder driven by [SEG] embeddings, and its loading), ``hiera`` (SAM2's
image encoder written out for speed), ``memory`` (video memory of SAM2 and SAM 3's tracker), ``sam3`` (the SAM3
release's tracker) and ``rules`` (what differs between the SAM2 and SAM3 releases).
"""
