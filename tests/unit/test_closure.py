"""The import closure and its digest (pipeline.closure): what the training fingerprint hashes as "the code"."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import REPO

from pipeline.closure import PROJECT_ROOT, closure_digest, import_closure
from pipeline.train import TRAIN_ENTRY


def copy_code(dest: Path) -> Path:
    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_training_closure_is_the_train_stage_and_what_it_imports() -> None:
    assert PROJECT_ROOT == REPO  # tests run the checkout itself
    files, missing = import_closure(TRAIN_ENTRY)
    assert missing == []
    assert {"stages/train.py", "pipeline/train.py", "pipeline/losses.py", "pipeline/closure.py"} <= files
    assert {"pipeline/rle.py", "pipeline/infer.py", "stages/infer.py"}.isdisjoint(files)  # not imported by training


def test_the_digest_follows_the_bytes_of_the_closure_and_nothing_else(tmp_path: Path) -> None:
    code = copy_code(tmp_path / "copy")
    before = closure_digest(TRAIN_ENTRY, REPO)
    assert closure_digest(TRAIN_ENTRY, code) == before  # the same code elsewhere: the same digest
    # a module outside the closure: no change
    (code / "pipeline" / "rle.py").write_text((code / "pipeline" / "rle.py").read_text() + "# edited\n")
    assert closure_digest(TRAIN_ENTRY, code) == before
    # one line of the loss module, which training imports: another digest
    losses = code / "pipeline" / "losses.py"
    text = losses.read_text()
    losses.write_text(text.replace("from __future__ import annotations", "from __future__ import annotations  # x", 1))
    assert losses.read_text() != text
    edited = closure_digest(TRAIN_ENTRY, code)
    assert edited != before
    losses.write_text(text)
    assert closure_digest(TRAIN_ENTRY, code) == before  # and back
    # a module joining the closure (a new import) changes it too
    new = code / "pipeline" / "extra.py"
    new.write_text("X = 1\n")
    assert closure_digest(TRAIN_ENTRY, code) == before
    train = code / "pipeline" / "train.py"
    train.write_text(train.read_text().replace("import yaml\n", "import yaml\n\nimport pipeline.extra  # noqa\n", 1))
    assert "pipeline/extra.py" in import_closure(TRAIN_ENTRY, code)[0]
    assert closure_digest(TRAIN_ENTRY, code) != before
