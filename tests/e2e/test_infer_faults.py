"""Out of memory in inference (issue 19): ``infer`` and ``pseudo`` end with one line naming the ``infer`` key to lower.

Out of memory is raised at the boundary, by a forward hook on every fold model the stages load (the real tiny
models, the real stages run in-process through :func:`pipeline.errors.run_cli`), as the CUDA caching allocator or
the CPU allocator raise it. Whole images name ``infer.batch_size``, the sliding window ``infer.tile_batch``; each
with its value and half of it, and the stage exits with status 2 and that line, no traceback.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

import pipeline.ensemble.members as members
import stages.infer
import stages.pseudo
from pipeline import infer
from pipeline.config import InferParams, ModelConfig
from pipeline.errors import UserError, run_cli
from pipeline.faults import inference_memory

if TYPE_CHECKING:
    from e2e.conftest import Project

pytestmark = pytest.mark.slow

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"
CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"


def out_of_memory(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[int]:
    """Every fold model the inference code loads raises ``error`` in its forward; returns the batch sizes it saw."""
    real, seen = members.build_model, []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(int(args[0].shape[0]))
        raise error

    def build(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
        model = real(cfg, num_classes)
        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(members, "build_model", build)
    return seen


def cli_error(main: Callable[[list[str] | None], int], argv: list[str]) -> str:
    """Run a CLI ``main`` as its ``__main__`` does; return what it printed, asserting it ended as a user error."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == 2, err.getvalue()
    return err.getvalue()


def one_line(text: str) -> str:
    """The error line at the end of a stage's stderr (progress bars go there too), which holds no traceback."""
    *_, last = text.rstrip("\n").splitlines()
    assert last.startswith("error: ") and "Traceback" not in text, text
    return last[len("error: ") :]


def test_the_infer_stage_names_infer_batch_size(trained: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage's first forward is the out-of-fold prediction that chooses TTA and weights (``infer.tta: auto``)."""
    p = trained
    ledger = p.layout.ledger.read_bytes() if p.layout.ledger.is_file() else None
    monkeypatch.chdir(p.root)
    seen = out_of_memory(monkeypatch, torch.cuda.OutOfMemoryError(CUDA_OOM))
    msg = one_line(cli_error(stages.infer.main, []))
    assert msg == (
        "fold 0: predicting out of fold (to choose TTA, weights and post-processing): out of memory at "
        "infer.batch_size 16; set infer.batch_size to 8"
    ), msg
    assert seen == [16]  # one forward, of infer.batch_size images
    assert (p.layout.ledger.read_bytes() if p.layout.ledger.is_file() else None) == ledger  # no row for no submission


@pytest.mark.parametrize(
    ("error", "changes", "expected"),
    [
        pytest.param(
            RuntimeError(CPU_OOM), {}, "out of memory at infer.batch_size 16; set infer.batch_size to 8", id="whole"
        ),
        pytest.param(
            MemoryError(),
            {"batch_size": 1},
            "out of memory at infer.batch_size 1; set infer.sliding: true to predict in tiles, or infer.batched_tta: "
            "false, or run on a device with more memory",
            id="whole-batch-1",
        ),
        pytest.param(
            torch.cuda.OutOfMemoryError(CUDA_OOM),
            {"sliding": True, "tile": [32, 48], "tile_batch": 6},
            "out of memory through the sliding window at infer.tile_batch 6; set infer.tile_batch to 3",
            id="sliding",
        ),
        pytest.param(
            torch.cuda.OutOfMemoryError(CUDA_OOM),
            {"sliding": True, "tile": [32, 48], "tile_batch": 1, "batched_tta": False},
            "out of memory through the sliding window at infer.tile_batch 1; set a smaller infer.tile (now [32, 48]), "
            "or run on a device with more memory",
            id="sliding-tile-batch-1",
        ),
    ],
)
def test_predicting_the_test_images_names_the_infer_key_to_lower(
    trained: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    changes: dict[str, Any],
    expected: str,
) -> None:
    """A ``--checkpoint`` member of a model without out-of-fold predictions, and ``--tta none``: nothing is chosen
    out of fold, so the test images' pass is the first forward."""
    p = trained
    params = p.write_params(f"params_oom_{len(changes)}_{changes.get('tile_batch', 0)}.yaml", infer=changes)
    checkpoint = tmp_path / "member.pt"
    ck = torch.load(p.layout.checkpoint(p.model, 0), map_location="cpu", weights_only=True)
    torch.save({**ck, "model_name": "tiny_no_oof"}, checkpoint)  # work/r1/models/tiny_no_oof/fold0/oof.npz: none
    out = tmp_path / "submission.csv"
    monkeypatch.chdir(p.root)
    seen = out_of_memory(monkeypatch, error)
    argv = ["--checkpoint", str(checkpoint), "--tta", "none", "--params", str(params), "--output", str(out)]
    msg = one_line(cli_error(infer.main, argv))
    assert msg == f"infer: predicting the test images: {expected}", msg
    assert not out.exists()
    # the batch the model saw: infer.batch_size test images (12 of them), or infer.tile_batch tiles of one image
    assert seen == ([changes["tile_batch"]] if "tile" in changes else [min(12, changes.get("batch_size", 16))])


def test_the_pseudo_stage_names_infer_batch_size(trained: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    p = trained
    monkeypatch.chdir(p.root)
    before = sorted(p.layout.pseudo_dir(1, 0).parent.glob("*")) if p.layout.pseudo_dir(1, 0).parent.is_dir() else []
    out_of_memory(monkeypatch, torch.cuda.OutOfMemoryError(CUDA_OOM))
    # the default first predicts the folds' OOF, to fit the post-processing rules the pseudo-labels get
    msg = one_line(cli_error(stages.pseudo.main, ["--round", "1"]))
    assert msg == (
        "fold 0: predicting out of fold (to choose TTA, weights and post-processing): out of memory at "
        "infer.batch_size 16; set infer.batch_size to 8"
    ), msg
    plain = p.write_params("params_nopp.yaml", infer={"postprocess": "none"})  # then the labelling itself
    msg = one_line(cli_error(stages.pseudo.main, ["--round", "1", "--params", str(plain)]))
    assert msg == (
        "pseudo set 0: labelling the test images: out of memory at infer.batch_size 16; set infer.batch_size to 8"
    ), msg
    after = sorted(p.layout.pseudo_dir(1, 0).parent.glob("*")) if p.layout.pseudo_dir(1, 0).parent.is_dir() else []
    assert after == before  # the set's temporary folder is gone, no half set in its place


def test_other_runtime_errors_keep_their_traceback() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with inference_memory(InferParams(), None, "infer"):
            raise RuntimeError("shape mismatch")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_out_of_memory_is_the_same_one_line() -> None:
    with pytest.raises(UserError, match=r"^infer: out of memory at infer\.batch_size 64; set infer\.batch_size to 32$"):
        with inference_memory(InferParams(batch_size=64), None, "infer"):
            torch.empty(2**62, dtype=torch.uint8, device="cuda")  # 4 EiB: the caching allocator's own error
    torch.cuda.empty_cache()
