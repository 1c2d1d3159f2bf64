"""bench/bench_scaling.py end to end at a tiny size (12 images, 1x and 2x, the tiny model): every stage x scale row
in the written table with the image counts asked for, and the masks stage at 2x wrote twice the 1x mask files."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_bench

from pipeline.paths import Layout

pytestmark = pytest.mark.slow


def test_scaling_bench_measures_every_stage_at_every_scale(tmp_path: Path) -> None:
    bench = load_bench("bench_scaling.py", "bench_scaling")
    out, work = tmp_path / "scaling.md", tmp_path / "work"
    argv = ["--images", "12", "--scales", "1,2", "--sides", "", "--tiny", "--work", str(work), "--out", str(out)]
    assert bench.main(argv) == 0

    text = out.read_text()
    assert "`python bench/bench_scaling.py --images 12 --scales 1,2 --sides '' --tiny" in text
    rows = [ln.split("|")[1:-1] for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| stage")]
    cells = {(r[0].strip(), r[1].strip()): [c.strip() for c in r[2:]] for r in rows}
    stages = list(bench.STAGES)
    assert sorted(cells) == sorted((stage, scale) for stage in stages for scale in ("1x", "2x images"))
    for scale, n in (("1x", 12), ("2x images", 24)):
        # masks, folds, the OOF fit and the test pass each see every image asked for; the train rows fold 0's share
        for stage in ("masks", "folds", "OOF fit", "test inference", "run_ensemble"):
            assert cells[stage, scale][0] == str(n), (stage, scale)
        assert 0 < int(cells["train epoch", scale][0]) <= int(cells["train_fold", scale][0]) < n
        seconds, peak = float(cells["masks", scale][3]), float(cells["masks", scale][6])
        assert seconds > 0 and peak > 0
    assert cells["masks", "2x images"][2] == "2.00"  # data x: twice the images at the same side

    # Independently of the table: the masks stage of the 2x project wrote twice the mask files of the 1x one.
    one, two = (len(list(Layout(work / folder).masks_dir.glob("*.png"))) for folder in ("x1", "images2"))
    assert (one, two) == (12, 24)
