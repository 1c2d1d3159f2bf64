"""Submission files: one module per concern.

* :mod:`~pipeline.submission.format`: :class:`SubmissionFormat` (the layouts), class labels, the format from params;
* :mod:`~pipeline.submission.codec`: the only code that knows the text of a submission row, both ways;
* :mod:`~pipeline.submission.validate`: check a submission against its sample, image sizes and classes;
* :mod:`~pipeline.submission.writer`: class masks in, a checked CSV out;
* :mod:`~pipeline.submission.ledger`: one row per submission made;
* :mod:`~pipeline.submission.coco_results`: COCO results json for instance-style leaderboards;
* :mod:`~pipeline.submission.cli`: ``python -m pipeline.submission validate SUB.csv ...``.
"""
