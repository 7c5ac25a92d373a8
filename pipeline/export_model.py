"""`vqgen export-model`: a finished run's two models and its model card in one folder, ready for the Hub.

OUT/vqvae/ and OUT/prior/ are written by save_pretrained (config.json and model.safetensors, so an
older run's model.pt is converted on the way; OUT/vqvae/ is the run's VQ-VAE with its decoder tuned, when it
tuned one), with the prior's sampling.json when eval chose one;
OUT/README.md is the model card (pipeline/model_card.py) and OUT/samples.png the run's sample grid.
No training state, metrics or data leave the run. `Generator.from_pretrained(OUT)` loads the folder,
and the Hub repo it is uploaded to (`hf upload OWNER/NAME OUT`), through the same code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vqgen.engine.checkpoint import CONFIG_FILE, weights_path
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_directory, read_json
from vqgen.engine.locks import directory_lock
from vqgen.pipeline.evaluation.report import EVAL_FILE
from vqgen.pipeline.generate import PRIOR_FOLDER, SAMPLING_FILE, VQVAE_FOLDER, load_sampling, run_vqvae, save_sampling
from vqgen.pipeline.model_card import SAMPLES_FILE, model_card
from vqgen.pipeline.spec import RunSpec, load_spec, require_run_dir
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN

REPORT_FILE = "report.json"  # written last by `vqgen run` (pipeline/report.py)
CARD_FILE = "README.md"      # the Hub shows a repo's README.md as its model card
GRID = Path("samples") / "grid.png"


def finished_run(run: Path) -> RunSpec:
    """The spec of the run in `run`, once both stages are trained and the run has written its report."""
    spec = load_spec(run)
    for stage in (VQVAE_FOLDER, PRIOR_FOLDER):
        if not (run / stage / CONFIG_FILE).exists() or not weights_path(run / stage).exists():
            raise VQGenError(f"{run} has no trained {stage} ({run / stage} holds no weights); finish the run with "
                             "`vqgen run` (the same options resume it) before exporting it")
    if not (run / REPORT_FILE).exists():
        raise VQGenError(f"{run} is not finished (no {REPORT_FILE}); finish it with `vqgen run` before exporting it")
    return spec


def export_model(run: str | Path, out: str | Path) -> Path:
    """Write the folder `out` from the run in `run` (holding the run's lock, so no run writes there
    meanwhile); `out` appears complete or not at all. A path that holds no run is refused before the lock,
    whose file would create it."""
    run, out = Path(run), Path(out)
    require_run_dir(run)
    with directory_lock(run):
        spec = finished_run(run)
        vqvae, prior = VQVAE.from_pretrained(run_vqvae(run)), GatedPixelCNN.from_pretrained(run / PRIOR_FOLDER)
        report = read_json(run / REPORT_FILE, "run report")
        figures = read_json(run / EVAL_FILE, "eval figures") if (run / EVAL_FILE).exists() else None
        with atomic_directory(out) as tmp:
            vqvae.save_pretrained(tmp / VQVAE_FOLDER)
            prior.save_pretrained(tmp / PRIOR_FOLDER)
            if (run / PRIOR_FOLDER / SAMPLING_FILE).exists():
                save_sampling(load_sampling(run / PRIOR_FOLDER), tmp / PRIOR_FOLDER)
            if (run / GRID).exists():
                shutil.copyfile(run / GRID, tmp / SAMPLES_FILE)
            card = model_card(spec, report, figures, vqvae.config, prior.config, (run / GRID).exists())
            (tmp / CARD_FILE).write_text(card)
    return out
