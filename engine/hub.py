"""Model folders named by a local path or by a Hugging Face Hub repo id ("owner/name[@revision]").

A Hub id is downloaded once with huggingface_hub's `snapshot_download` into its cache
(~/.cache/huggingface/hub) and read from there, so `VQVAE.from_pretrained("owner/name")` and
`VQVAE.from_pretrained("runs/demo/vqvae")` load through the same code. huggingface_hub is an optional
extra (`pip install 'vqgen[hub]'`), imported only when a Hub id is given.
"""

from __future__ import annotations

import re
from pathlib import Path

from vqgen.engine.errors import VQGenError

# The Hub's repo ids: owner/name of letters, digits, '-', '_' and '.', optionally @ a branch, tag or commit.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
HUB_EXTRA = "pip install 'vqgen[hub]'"


def is_hub_id(source: str | Path) -> bool:
    """True for "owner/name" or "owner/name@revision" that names no local file or folder: an existing
    path always wins, so a run directory called "runs/demo" is never looked up on the Hub."""
    return not Path(source).exists() and HUB_ID.fullmatch(str(source)) is not None


def local_folder(source: str | Path, subfolder: str | None = None) -> Path:
    """The local folder `source` names (a Hub id: its downloaded snapshot), or its `subfolder`."""
    folder = download(str(source)) if is_hub_id(source) else Path(source)
    return folder / subfolder if subfolder else folder


def download(hub_id: str) -> Path:
    """The snapshot of the Hub repo `hub_id` ("owner/name[@revision]") in huggingface_hub's cache,
    downloaded on first use; a missing package or a failed download is one line."""
    repo_id, _, revision = hub_id.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise VQGenError(f"{hub_id} is not a local folder; to read it as a Hugging Face Hub repo id, "
                         f"{HUB_EXTRA}") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, library_name="vqgen"))
    except (OSError, ValueError) as err:  # huggingface_hub's errors: HTTP, not found, offline, bad id
        reason = (str(err).strip().splitlines() or [""])[0]
        raise VQGenError(f"{hub_id} is not a local folder, and downloading it from the Hugging Face Hub failed "
                         f"({type(err).__name__}: {reason}); check the repo id and the connection, or pass a "
                         "local folder") from None
