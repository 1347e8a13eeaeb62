"""Read, validate and split the three data sources into $MEDMINDS_HOME/data/<prepare run id>/.

Each preparation (source, split, seed, ...) has its own folder, named after its run, and every stage reads the
folder of the prepare run it needs: preparing another source for the same size can never change the data under
a finished or a preempted run. A local source's identity is its content too (each file's path, size and mtime,
taken when the run is planned), so adding or replacing files makes a new prepare run rather than reusing a
folder made from the old files; a job whose source changed after it was planned stops and says so. The work is `medminds_hpc.data.prepare.prepare`; this module stays light (the CLI
imports it without loading `datasets`, `pyarrow` or `pandas`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from medminds_hpc import paths
from medminds_hpc.data.instruct import Source
from medminds_hpc.training.options import doc

EXPERIMENT = "prepare"
CARD_FILE = "card.json"  # a copy of the data folder's card, kept with the run
HEADLINE = "rows"  # rows written, all files together: what `medminds status` shows for a prepare run


@dataclass
class Config:
    source: str = field(default="hub", metadata=doc("hub (on clusters), synthetic (offline demo), or a path to local files", nonempty=True))
    split: Literal["first", "stratified"] = field(default="stratified", metadata=doc("first N rows (the paper) or sampled by subject"))
    seed: int = field(default=0, metadata=doc("seed for stratified sampling and ARC option choice", ge=0, le=2**32 - 1))
    cop_base: int | None = field(default=None, metadata=doc("0 or 1: MedMCQA answer convention when a file is ambiguous", ge=0, le=1))
    bad_rows: Literal["strict", "skip"] = field(default="strict", metadata=doc("fail on invalid rows, or drop and count them"))
    instruct: list[Source] = field(default_factory=lambda: ["mistral-instruct"],
                                metadata=doc("domain-expert data: any of mistral-instruct (the paper's), wikidoc, medquad", nonempty=True))
    force: bool = field(default=False, metadata=doc("rebuild even when the folder's card.json says it is up to date"))
    source_fingerprint: str = field(default="", metadata=doc(
        "set when the run is planned: the local source's files (path, size, mtime); changed files make a new run"))

    def __post_init__(self) -> None:
        if self.source not in ("hub", "synthetic"):
            # absolute, so the job reads the same files wherever it starts, and the run id tells paths apart
            self.source = os.path.abspath(os.path.expanduser(self.source))
        problems = self._check_source()
        if problems:
            raise ValueError("\n".join(problems))

    def _check_source(self) -> list[str]:
        """Fill in the fingerprint of a local source (planning), or check it still holds (in the job)."""
        if self.source in ("hub", "synthetic"):
            self.source_fingerprint = ""
            return []
        if not os.path.exists(self.source):
            return [f"source: {self.source} is neither 'hub', 'synthetic' nor an existing file or folder; give a MedMCQA "
                    "file or a folder laid out like shared/data"]
        from medminds_hpc.data.prepare import source_fingerprint
        from medminds_hpc.errors import UserError

        try:
            current = source_fingerprint(self.source, self.instruct)
        except UserError as e:
            return [f"source: {e}"]
        if self.source_fingerprint and self.source_fingerprint != current:
            return [f"source: the files in {self.source} changed after this run was planned (fingerprint "
                    f"{self.source_fingerprint}, now {current}); submit again: the new files get a prepare run of their own"]
        self.source_fingerprint = current
        return []


def run_id_for(dataset: str, cfg: Config) -> str:
    """The id `medminds submit` gives the prepare run of this config (so `medminds prepare` fills the same folder)."""
    from medminds_hpc import experiments, runs

    exp = experiments.load(EXPERIMENT)
    resolved = experiments.Resolved(exp, dataset, None, dataclasses.replace(cfg, force=False), {})
    return runs.make_run_id(EXPERIMENT, dataset, resolved.identity({}))


def run(ctx: Any, cfg: Config) -> dict[str, Any]:
    from medminds_hpc.data.prepare import prepare

    card = prepare(ctx.dataset, out_dir=paths.prepared_dir(ctx.run.id), source=cfg.source, split=cfg.split, seed=cfg.seed, cop_base=cfg.cop_base,
                   bad_rows=cfg.bad_rows, instruct_sources=cfg.instruct, force=cfg.force, show_progress=False,
                   say=lambda message: print(message, flush=True))
    ctx.write_json(CARD_FILE, card)
    result: dict[str, Any] = {f"rows_{name}": info["rows"] for name, info in card.get("splits", {}).items()}
    result[HEADLINE] = sum(result.values())
    result["up_to_date"] = bool(card.get("up_to_date"))
    result["warnings"] = len(card.get("warnings", []))
    return result
