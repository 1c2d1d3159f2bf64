"""The values of a label mask, one home for every module that paints, reads, learns from or scores one.

A mask is an (H, W) uint8 array of class indices: 0 is background, 1..K the classes, and :data:`IGNORE_INDEX` marks
pixels that are never learned from or scored (COCO crowd regions painted as ignore, unconfident pseudo-label pixels,
padding). It is the ``ignore_index`` of the losses and metrics, so a class index is at most ``IGNORE_INDEX - 1``.
"""

from __future__ import annotations

IGNORE_INDEX = 255
MAX_CLASSES = IGNORE_INDEX - 1  # foreground classes a mask can hold (1..254), background 0 besides
