"""Datasets for training and evaluation.

* `retinaedge.train.data.synth`: the synthetic shapes-on-clutter COCO set (`write_synthetic_coco`); numpy and
  PIL only, so ``retinaedge data synth`` never imports torch.
* `retinaedge.train.data.video_synth`: a synthetic test video with per-frame ground truth.
* `retinaedge.train.data.coco`: `CocoDetection`, `collate`, `make_loader`, `read_categories` (torch).
* `retinaedge.train.data.transforms`: `AugmentConfig`, flip and photometric jitter (numpy).

Nothing is imported here, so importing one submodule does not pull in the others' dependencies.
"""
